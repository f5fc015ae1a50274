//! The computed profile of a contact: engagement tier, purchase profile, RFM scores and
//! lifecycle stage. Plain data and pure functions; the segment engine stores the result in the
//! contact row (`contacts.profile`), where templates and conditions read it as `contact.…`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ProfileSettings;
use crate::workflow::condition::{as_number, lookup};
use crate::workflow::model::Duration;
use crate::workflow::timing::parse_cron;

/// The profile field of the last human engagement, as contact views and conditions name it.
pub const LAST_ENGAGED_AT: &str = "last_engaged_at";

/// How profiles are computed, as far as stored ones depend on it: bump it when that changes,
/// and the next start rebuilds every stored profile once, as changed `[profile]` rules do.
pub const PROFILE_VERSION: u32 = 1;

/// The profile keys that contact views take from the computed profile, over any attribute of
/// the same name.
pub const PROFILE_KEYS: &[&str] = &[
    "engagement",
    LAST_ENGAGED_AT,
    "purchase",
    "rfm",
    "lifecycle",
];

/// `[profile]` settings, parsed.
#[derive(Debug, Clone)]
pub struct ProfileRules {
    pub active_within: TimeDelta,
    pub inactive_within: TimeDelta,
    pub dormant_after_sends: i64,
    pub order_event: String,
    pub order_value: String,
    pub high_value_total: Option<f64>,
    pub high_value_share: f64,
    pub refresh: String,
    /// Event name → stage, for the lifecycle mapping.
    pub stages: Vec<(String, Stage)>,
}

impl ProfileRules {
    pub fn from_settings(s: &ProfileSettings) -> Result<ProfileRules, String> {
        let active = Duration::parse_setting("profile.active_within", &s.active_within)?.0;
        let inactive = Duration::parse_setting("profile.inactive_within", &s.inactive_within)?.0;
        if inactive <= active {
            return Err(format!(
                "profile.inactive_within: `{}` must be longer than active_within `{}`",
                s.inactive_within, s.active_within
            ));
        }
        if !(s.high_value_share > 0.0 && s.high_value_share < 1.0) {
            return Err("profile.high_value_share: must be between 0 and 1".to_owned());
        }
        parse_cron(&s.refresh).map_err(|e| format!("profile.refresh: {e}"))?;
        let l = &s.lifecycle;
        let stages = [
            (&l.awareness, Stage::Awareness),
            (&l.consideration, Stage::Consideration),
            (&l.decision, Stage::Decision),
            (&l.retention, Stage::Retention),
            (&l.advocacy, Stage::Advocacy),
        ]
        .into_iter()
        .flat_map(|(names, stage)| names.iter().map(move |n| (n.clone(), stage)))
        .collect();
        Ok(ProfileRules {
            active_within: active,
            inactive_within: inactive,
            dormant_after_sends: i64::from(s.dormant_after_sends),
            order_event: s.order_event.clone(),
            order_value: s.order_value.clone(),
            high_value_total: s.high_value_total,
            high_value_share: s.high_value_share,
            refresh: s.refresh.clone(),
            stages,
        })
    }

    /// Event names whose arrival changes a profile.
    pub fn observes(&self, event: &str) -> bool {
        matches!(event, "email_opened" | "email_clicked")
            || event == self.order_event
            || self.stages.iter().any(|(n, _)| n == event)
    }

    /// The stages that events lead to, furthest first, each with its event names: a contact's
    /// lifecycle stage is the first of these with any event (before the repeat-order rule).
    pub fn stage_tiers(&self) -> Vec<(Stage, Vec<&str>)> {
        let mut tiers: BTreeMap<std::cmp::Reverse<Stage>, Vec<&str>> = BTreeMap::new();
        for (name, stage) in &self.stages {
            tiers
                .entry(std::cmp::Reverse(*stage))
                .or_default()
                .push(name.as_str());
        }
        tiers.into_iter().map(|(s, names)| (s.0, names)).collect()
    }

    fn stage_of(&self, event: &str) -> Option<Stage> {
        self.stages
            .iter()
            .filter(|(n, _)| n == event)
            .map(|(_, s)| *s)
            .max()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Active,
    Inactive,
    Dormant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Awareness,
    Consideration,
    Decision,
    Retention,
    Advocacy,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Purchase {
    pub orders: i64,
    pub total: f64,
    pub average: f64,
    pub first_order_at: Option<DateTime<Utc>>,
    pub last_order_at: Option<DateTime<Utc>>,
    /// `first-time`, `repeat` or `high-value`; absent before the first order.
    pub tier: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rfm {
    pub recency: u8,
    pub frequency: u8,
    pub monetary: u8,
    /// The three scores as digits, `"543"`.
    pub score: String,
    pub segment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub engagement: Tier,
    /// The last human open or click (machine opens and scanner clicks do not count).
    pub last_engaged_at: Option<DateTime<Utc>>,
    pub purchase: Purchase,
    pub rfm: Option<Rfm>,
    pub lifecycle: Option<Stage>,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            engagement: Tier::Active,
            last_engaged_at: None,
            purchase: Purchase::default(),
            rfm: None,
            lifecycle: None,
        }
    }
}

/// What the profile needs to know about one event.
pub struct Observed<'a> {
    pub name: &'a str,
    pub properties: &'a Value,
    pub occurred_at: DateTime<Utc>,
}

impl Profile {
    /// Reads a stored profile; an empty or unreadable one starts afresh.
    pub fn from_json(value: &Value) -> Profile {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Folds one event into the profile. Order does not matter, so a full recompute over a
    /// contact's events and incremental updates as events arrive give the same profile.
    pub fn observe(&mut self, event: &Observed<'_>, rules: &ProfileRules) {
        let machine = event
            .properties
            .get("machine")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if matches!(event.name, "email_opened" | "email_clicked") && !machine {
            self.last_engaged_at = self.last_engaged_at.max(Some(event.occurred_at));
        }
        if event.name == rules.order_event {
            let p = &mut self.purchase;
            let value = lookup(event.properties, &rules.order_value)
                .and_then(as_number)
                .unwrap_or(0.0);
            p.orders += 1;
            p.total += value;
            p.average = p.total / p.orders as f64;
            p.first_order_at = Some(match p.first_order_at {
                Some(t) => t.min(event.occurred_at),
                None => event.occurred_at,
            });
            p.last_order_at = p.last_order_at.max(Some(event.occurred_at));
        }
        let mut stage = rules.stage_of(event.name);
        if self.purchase.orders >= 2 {
            stage = stage.max(Some(Stage::Retention));
        }
        self.lifecycle = self.lifecycle.max(stage);
    }

    /// Derives what depends on time and on the whole population: the engagement tier (from the
    /// last engagement, or from sign-up for a contact who never engaged, unless `sends` emails
    /// went unanswered) and the purchase tier (against `high_value`, the current threshold).
    /// Returns the next instant the tier changes by itself.
    pub fn settle(
        &mut self,
        created_at: DateTime<Utc>,
        sends: i64,
        high_value: Option<f64>,
        now: DateTime<Utc>,
        rules: &ProfileRules,
    ) -> Option<DateTime<Utc>> {
        let (tier, next) = self.engagement_at(created_at, sends, now, rules);
        self.engagement = tier;
        self.purchase.tier = purchase_tier(&self.purchase, high_value);
        next
    }

    /// The engagement tier at `now`, and the instant it lapses next.
    pub fn engagement_at(
        &self,
        created_at: DateTime<Utc>,
        sends: i64,
        now: DateTime<Utc>,
        rules: &ProfileRules,
    ) -> (Tier, Option<DateTime<Utc>>) {
        let reference = self.last_engaged_at.unwrap_or(created_at);
        let lapse = TimeDelta::microseconds(1);
        let inactive_at = reference + rules.active_within + lapse;
        let dormant_at = reference + rules.inactive_within + lapse;
        if self.last_engaged_at.is_none() && sends >= rules.dormant_after_sends {
            (Tier::Dormant, None)
        } else if now < inactive_at {
            (Tier::Active, Some(inactive_at))
        } else if now < dormant_at {
            (Tier::Inactive, Some(dormant_at))
        } else {
            (Tier::Dormant, None)
        }
    }
}

/// `high-value` at or above the threshold, else `first-time` or `repeat`; none before an order.
pub fn purchase_tier(p: &Purchase, high_value: Option<f64>) -> Option<String> {
    let tier = match p.orders {
        0 => return None,
        _ if high_value.is_some_and(|t| p.total >= t) => "high-value",
        1 => "first-time",
        _ => "repeat",
    };
    Some(tier.to_owned())
}

/// RFM scores for one purchaser: its last order time, order count and total value.
#[derive(Debug, Clone, PartialEq)]
pub struct Purchaser {
    pub contact_id: String,
    pub last_order_at: DateTime<Utc>,
    pub orders: i64,
    pub total: f64,
}

impl Purchaser {
    /// What scoring reads of a contact's purchases; `None` before its first order.
    pub fn of(contact_id: &str, purchase: &Purchase) -> Option<Purchaser> {
        Some(Purchaser {
            contact_id: contact_id.to_owned(),
            last_order_at: purchase.last_order_at?,
            orders: purchase.orders,
            total: purchase.total,
        })
    }
}

/// Quintile scores 1–5 over all purchasers. A score is one more than the number of fifths of
/// purchasers with a strictly lower value (more recent is higher for recency), so equal values
/// always share a score: with n purchasers and r of them strictly below, the score is
/// `1 + floor(5 r / n)`.
pub fn rfm_scores(purchasers: &[Purchaser]) -> Vec<Rfm> {
    let n = purchasers.len();
    let quintiles = |key: &dyn Fn(&Purchaser) -> f64| -> Vec<u8> {
        let mut sorted: Vec<f64> = purchasers.iter().map(key).collect();
        sorted.sort_by(f64::total_cmp);
        purchasers
            .iter()
            .map(|p| {
                let below = sorted.partition_point(|v| *v < key(p));
                (1 + (5 * below) / n.max(1)).min(5) as u8
            })
            .collect()
    };
    let r = quintiles(&|p| p.last_order_at.timestamp_micros() as f64);
    let f = quintiles(&|p| p.orders as f64);
    let m = quintiles(&|p| p.total);
    (0..n)
        .map(|i| Rfm {
            recency: r[i],
            frequency: f[i],
            monetary: m[i],
            score: format!("{}{}{}", r[i], f[i], m[i]),
            segment: rfm_segment(r[i], f[i]).to_owned(),
        })
        .collect()
}

/// The usual named RFM segments, by recency and frequency score.
pub fn rfm_segment(recency: u8, frequency: u8) -> &'static str {
    match (recency, frequency) {
        (5, 4..=5) => "Champions",
        (3..=4, 4..=5) => "Loyal",
        (4..=5, 2..=3) => "Potential Loyalist",
        (5, _) => "New",
        (4, _) => "Promising",
        (3, 3) => "Need Attention",
        (3, _) => "About to Sleep",
        (1..=2, 5) => "Can't Lose",
        (1..=2, 3..=4) => "At Risk",
        (2, _) => "Hibernating",
        _ => "Lost",
    }
}

/// The total value at the top `share` of purchasers: purchasers at or above it are high-value.
pub fn high_value_threshold(totals: &mut [f64], share: f64) -> Option<f64> {
    if totals.is_empty() {
        return None;
    }
    totals.sort_by(|a, b| b.total_cmp(a));
    let top = ((totals.len() as f64 * share).ceil() as usize).clamp(1, totals.len());
    Some(totals[top - 1])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Settings;

    fn rules() -> ProfileRules {
        let s = Settings::load_with_env(std::path::Path::new("/nonexistent"), None, &[]).unwrap();
        ProfileRules::from_settings(&s.profile).unwrap()
    }

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap() + TimeDelta::days(day)
    }

    #[test]
    fn machine_opens_do_not_engage() {
        let rules = rules();
        let mut p = Profile::default();
        let machine = json!({"machine": true});
        p.observe(
            &Observed {
                name: "email_opened",
                properties: &machine,
                occurred_at: at(100),
            },
            &rules,
        );
        p.settle(at(0), 1, None, at(101), &rules);
        assert_eq!(p.last_engaged_at, None);
        assert_eq!(p.engagement, Tier::Inactive);
        let human = json!({});
        p.observe(
            &Observed {
                name: "email_clicked",
                properties: &human,
                occurred_at: at(100),
            },
            &rules,
        );
        let next = p.settle(at(0), 1, None, at(101), &rules);
        assert_eq!(p.engagement, Tier::Active);
        assert_eq!(
            next,
            Some(at(130) + TimeDelta::microseconds(1)),
            "active until 30 days after the click"
        );
        assert_eq!(p.settle(at(0), 1, None, at(300), &rules), None);
        assert_eq!(p.engagement, Tier::Dormant);
    }

    #[test]
    fn unanswered_sends_make_a_new_contact_dormant() {
        let rules = rules();
        let mut p = Profile::default();
        p.settle(at(0), 4, None, at(1), &rules);
        assert_eq!(p.engagement, Tier::Active);
        p.settle(at(0), 5, None, at(1), &rules);
        assert_eq!(p.engagement, Tier::Dormant);
    }

    #[test]
    fn purchases_and_lifecycle() {
        let rules = rules();
        let mut p = Profile::default();
        for (day, total) in [(3, json!(40)), (1, json!("60.5"))] {
            let props = json!({ "total": total });
            p.observe(
                &Observed {
                    name: "order_placed",
                    properties: &props,
                    occurred_at: at(day),
                },
                &rules,
            );
        }
        p.settle(at(0), 0, Some(1000.0), at(5), &rules);
        assert_eq!(p.purchase.orders, 2);
        assert_eq!(p.purchase.total, 100.5);
        assert_eq!(p.purchase.first_order_at, Some(at(1)));
        assert_eq!(p.purchase.last_order_at, Some(at(3)));
        assert_eq!(p.purchase.tier.as_deref(), Some("repeat"));
        assert_eq!(p.lifecycle, Some(Stage::Retention));
        p.settle(at(0), 0, Some(100.0), at(5), &rules);
        assert_eq!(p.purchase.tier.as_deref(), Some("high-value"));
    }

    #[test]
    fn stage_tiers_run_furthest_first_and_a_name_counts_at_its_furthest_stage() {
        let mut rules = rules();
        rules.stages = vec![
            ("page_viewed".to_owned(), Stage::Awareness),
            ("review_posted".to_owned(), Stage::Advocacy),
            ("product_viewed".to_owned(), Stage::Consideration),
            ("signed_up".to_owned(), Stage::Awareness),
            ("page_viewed".to_owned(), Stage::Decision),
        ];
        assert_eq!(
            rules.stage_tiers(),
            vec![
                (Stage::Advocacy, vec!["review_posted"]),
                (Stage::Decision, vec!["page_viewed"]),
                (Stage::Consideration, vec!["product_viewed"]),
                (Stage::Awareness, vec!["page_viewed", "signed_up"]),
            ]
        );
        assert_eq!(rules.stage_of("page_viewed"), Some(Stage::Decision));
    }

    /// Ten purchasers, scored by hand: with r of them strictly below, the score is 1 + ⌊5r/10⌋.
    #[test]
    fn rfm_against_a_hand_computed_fixture() {
        let rows = [
            // (days since epoch of the last order, orders, total)
            (1, 1, 10.0),
            (2, 1, 20.0),
            (3, 1, 30.0),
            (4, 2, 40.0),
            (5, 2, 50.0),
            (6, 3, 60.0),
            (7, 3, 70.0),
            (8, 4, 80.0),
            (9, 5, 90.0),
            (10, 8, 100.0),
        ];
        let purchasers: Vec<Purchaser> = rows
            .iter()
            .enumerate()
            .map(|(i, (day, orders, total))| Purchaser {
                contact_id: format!("c{i}"),
                last_order_at: at(*day),
                orders: *orders,
                total: *total,
            })
            .collect();
        let scores: Vec<String> = rfm_scores(&purchasers)
            .iter()
            .map(|r| format!("{} {}", r.score, r.segment))
            .collect();
        // Recency and monetary are distinct: 1 + ⌊i/2⌋. Frequency: orders 1 (none below → 1),
        // 2 (three below → 2), 3 (five below → 3), 4 (seven → 4), 5 (eight → 5), 8 (nine → 5).
        assert_eq!(
            scores,
            [
                "111 Lost",
                "111 Lost",
                "212 Hibernating",
                "222 Hibernating",
                "323 About to Sleep",
                "333 Need Attention",
                "434 Potential Loyalist",
                "444 Loyal",
                "555 Champions",
                "555 Champions",
            ]
        );
    }

    #[test]
    fn high_value_is_the_top_share() {
        let mut totals = vec![5.0, 50.0, 500.0, 20.0, 10.0, 1.0, 2.0, 3.0, 4.0, 6.0];
        assert_eq!(high_value_threshold(&mut totals, 0.1), Some(500.0));
        assert_eq!(high_value_threshold(&mut totals, 0.2), Some(50.0));
        assert_eq!(high_value_threshold(&mut [], 0.2), None);
    }
}
