//! When time-based triggers fire: yearly dates from a contact attribute (birthdays,
//! anniversaries) and cron schedules, in a fixed zone or in each contact's own zone. Pure
//! functions of (definition, contact, instant); the scheduler stores and sweeps the results.

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::CronParser;
use serde_json::Value;

use super::model::{DateTrigger, ScheduleTrigger, ScheduleZone, Trigger};

/// Local time a date trigger fires at when `at` is not given.
pub const DEFAULT_DATE_AT: NaiveTime = match NaiveTime::from_hms_opt(9, 0, 0) {
    Some(t) => t,
    None => NaiveTime::MIN,
};

/// One occurrence of a trigger for a contact: when, and a key that names it (the year of a
/// date, the local time of a cron tick) so each occurrence fires once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub at: DateTime<Utc>,
    pub key: String,
}

/// Parses a 5-field cron expression with POSIX semantics (Sunday is 0 or 7, Monday 1).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 5 {
        return Err(format!(
            "`{expr}` is not a 5-field cron expression (minute hour day month weekday)"
        ));
    }
    CronParser::new()
        .parse(expr)
        .map_err(|e| format!("invalid cron `{expr}`: {e}"))
}

/// The first tick of `cron` in `zone` strictly after `after`. A local time skipped by a DST
/// change fires once at the first valid minute after the gap; a repeated one fires once.
pub fn next_cron(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The month and day (and year, when known) of a date attribute: "YYYY-MM-DD", "MM-DD" or an
/// RFC 3339 timestamp, read as a local date in `zone`.
pub fn parse_date_attribute(value: &Value, zone: Tz) -> Option<(Option<i32>, u32, u32)> {
    let text = value.as_str()?.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some((Some(date.year()), date.month(), date.day()));
    }
    if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        let local = ts.with_timezone(&zone).date_naive();
        return Some((Some(local.year()), local.month(), local.day()));
    }
    let (m, d) = text.split_once('-')?;
    let (month, day): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
    // Validate against a leap year so "02-29" is accepted.
    NaiveDate::from_ymd_opt(2000, month, day)?;
    Some((None, month, day))
}

/// `month`/`day` in `year`; Feb 29 becomes Feb 28 in other years.
fn anniversary(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, day).or_else(|| {
        (month == 2 && day == 29)
            .then(|| NaiveDate::from_ymd_opt(year, 2, 28))
            .flatten()
    })
}

/// The UTC instant of local `date` + `time` in `zone`; a time in a DST gap moves to the first
/// valid minute after it, an ambiguous one takes the earlier instant.
pub fn local_instant(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    // A gap is at most a few hours; a day of minutes bounds the walk for any zone.
    for _ in 0..(24 * 60) {
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => return t.with_timezone(&Utc),
            LocalResult::None => probe += TimeDelta::minutes(1),
        }
    }
    Utc.from_utc_datetime(&local)
}

/// The next occurrence of a yearly date trigger strictly after `after`. Occurrences are keyed
/// by the year of the anniversary; the original date's own year never fires (a sign-up day is
/// not its own anniversary).
pub fn next_date(
    trigger: &DateTrigger,
    attribute: &Value,
    zone: Tz,
    after: DateTime<Utc>,
) -> Option<Occurrence> {
    let (origin_year, month, day) = parse_date_attribute(attribute, zone)?;
    let offset = trigger.offset.map_or(TimeDelta::zero(), |o| o.0);
    let at = trigger.at.unwrap_or(DEFAULT_DATE_AT);
    let start = (after - offset).with_timezone(&zone).year() - 1;
    (start..start + 3).find_map(|year| {
        if origin_year.is_some_and(|y| year <= y) {
            return None;
        }
        let date = anniversary(year, month, day)?;
        let fire = local_instant(zone, date.and_time(at) + offset);
        (fire > after).then(|| Occurrence {
            at: fire,
            key: year.to_string(),
        })
    })
}

/// The next tick of a contact-local schedule strictly after `after`, keyed by its local time.
pub fn next_schedule_for_contact(
    cron: &Cron,
    zone: Tz,
    after: DateTime<Utc>,
) -> Option<Occurrence> {
    let at = next_cron(cron, zone, after)?;
    Some(Occurrence {
        at,
        key: at.with_timezone(&zone).format("%Y-%m-%dT%H:%M").to_string(),
    })
}

/// A time trigger in the form the scheduler works with.
#[derive(Debug, Clone)]
pub enum TimeTrigger {
    /// Per contact: a yearly date attribute.
    Date(DateTrigger),
    /// Per contact: cron in each contact's own zone.
    ContactSchedule {
        cron: Box<Cron>,
        audience: Option<String>,
    },
    /// One tick for everybody in a fixed zone.
    ZoneSchedule {
        cron: Box<Cron>,
        zone: Tz,
        audience: Option<String>,
    },
}

impl TimeTrigger {
    /// The time trigger of a workflow, if it has one (the cron was validated at load).
    /// `default_zone` is `sending.timezone`, for schedules that name no zone.
    pub fn of(trigger: &Trigger, default_zone: Tz) -> Option<TimeTrigger> {
        match trigger {
            Trigger::Date(d) => Some(TimeTrigger::Date(d.clone())),
            Trigger::Schedule(ScheduleTrigger {
                cron,
                timezone,
                audience,
            }) => {
                let cron = Box::new(parse_cron(cron).ok()?);
                Some(match timezone {
                    ScheduleZone::Contact => TimeTrigger::ContactSchedule {
                        cron,
                        audience: audience.clone(),
                    },
                    ScheduleZone::Zone(zone) => TimeTrigger::ZoneSchedule {
                        cron,
                        zone: *zone,
                        audience: audience.clone(),
                    },
                    ScheduleZone::Default => TimeTrigger::ZoneSchedule {
                        cron,
                        zone: default_zone,
                        audience: audience.clone(),
                    },
                })
            }
            _ => None,
        }
    }

    /// A string that changes whenever what the trigger computes changes, so stored times are
    /// recomputed once after an edit.
    pub fn spec(trigger: &Trigger, default_zone: Tz) -> String {
        format!("{trigger:?} default_zone={default_zone}")
    }

    /// The contact's next occurrence after `after`, for per-contact triggers.
    pub fn next_for_contact(
        &self,
        attributes: &Value,
        zone: Tz,
        after: DateTime<Utc>,
    ) -> Option<Occurrence> {
        match self {
            TimeTrigger::Date(d) => next_date(d, attributes.get(&d.attribute)?, zone, after),
            TimeTrigger::ContactSchedule { cron, .. } => {
                next_schedule_for_contact(cron, zone, after)
            }
            TimeTrigger::ZoneSchedule { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::workflow::model::SignedDuration;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn birthday(at: &str) -> DateTrigger {
        DateTrigger {
            attribute: "birthday".into(),
            offset: None,
            at: NaiveTime::parse_from_str(at, "%H:%M").ok(),
        }
    }

    #[test]
    fn birthdays_fire_at_local_nine_in_each_zone() {
        let t = birthday("09:00");
        let sydney: Tz = "Australia/Sydney".parse().unwrap();
        let ny: Tz = "America/New_York".parse().unwrap();
        let after = utc(2026, 11, 1, 0, 0);
        // Sydney in December is UTC+11: 09:00 local = 22:00 UTC the day before.
        let s = next_date(&t, &json!("1990-12-05"), sydney, after).unwrap();
        assert_eq!((s.at, s.key.as_str()), (utc(2026, 12, 4, 22, 0), "2026"));
        // New York in December is UTC-5.
        let n = next_date(&t, &json!("12-05"), ny, after).unwrap();
        assert_eq!(n.at, utc(2026, 12, 5, 14, 0));
    }

    #[test]
    fn feb_29_fires_on_feb_28_in_common_years() {
        let t = birthday("09:00");
        let next = next_date(
            &t,
            &json!("2000-02-29"),
            chrono_tz::UTC,
            utc(2026, 11, 1, 0, 0),
        )
        .unwrap();
        assert_eq!(
            (next.at, next.key.as_str()),
            (utc(2027, 2, 28, 9, 0), "2027")
        );
        let leap = next_date(&t, &json!("02-29"), chrono_tz::UTC, utc(2027, 3, 1, 0, 0)).unwrap();
        assert_eq!(leap.at, utc(2028, 2, 29, 9, 0));
    }

    #[test]
    fn offsets_and_anniversaries() {
        let mut t = birthday("09:00");
        t.offset = Some(SignedDuration(TimeDelta::days(-3)));
        let next = next_date(
            &t,
            &json!("1990-01-02"),
            chrono_tz::UTC,
            utc(2026, 11, 1, 0, 0),
        )
        .unwrap();
        // Three days before Jan 2 2027 is Dec 30 2026; the occurrence is the 2027 birthday.
        assert_eq!(
            (next.at, next.key.as_str()),
            (utc(2026, 12, 30, 9, 0), "2027")
        );
        // A sign-up timestamp: no anniversary in its own year.
        let anniv = DateTrigger {
            attribute: "signed_up_at".into(),
            offset: None,
            at: None,
        };
        let first = next_date(
            &anniv,
            &json!("2026-11-20T07:00:00Z"),
            chrono_tz::UTC,
            utc(2026, 11, 20, 8, 0),
        )
        .unwrap();
        assert_eq!(first.at, utc(2027, 11, 20, 9, 0));
        assert!(
            next_date(
                &anniv,
                &json!("not a date"),
                chrono_tz::UTC,
                utc(2026, 1, 1, 0, 0)
            )
            .is_none()
        );
        assert!(
            next_date(
                &anniv,
                &json!("13-40"),
                chrono_tz::UTC,
                utc(2026, 1, 1, 0, 0)
            )
            .is_none()
        );
    }

    #[test]
    fn dst_spring_forward_and_fall_back() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let daily_0230 = parse_cron("30 2 * * *").unwrap();
        // 2027-03-14: 02:30 does not exist in New York; it fires once at 03:00 EDT (07:00 UTC).
        let gap = next_cron(&daily_0230, ny, utc(2027, 3, 14, 5, 0)).unwrap();
        assert_eq!(gap, utc(2027, 3, 14, 7, 0));
        let after_gap = next_cron(&daily_0230, ny, gap).unwrap();
        assert_eq!(after_gap, utc(2027, 3, 15, 6, 30));
        // 2026-11-01: 01:30 happens twice; it fires once.
        let daily_0130 = parse_cron("30 1 * * *").unwrap();
        let first = next_cron(&daily_0130, ny, utc(2026, 11, 1, 4, 0)).unwrap();
        assert_eq!(first, utc(2026, 11, 1, 5, 30));
        let second = next_cron(&daily_0130, ny, first).unwrap();
        assert_eq!(second, utc(2026, 11, 2, 6, 30));
        // Berlin: 2027-03-28 02:30 skipped → 03:00 CEST (01:00 UTC); 2026-10-25 02:30 once.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            next_cron(&daily_0230, berlin, utc(2027, 3, 27, 23, 0)).unwrap(),
            utc(2027, 3, 28, 1, 0)
        );
        let once = next_cron(&daily_0230, berlin, utc(2026, 10, 24, 23, 0)).unwrap();
        assert_eq!(once, utc(2026, 10, 25, 0, 30));
        assert_eq!(
            next_cron(&daily_0230, berlin, once).unwrap(),
            utc(2026, 10, 26, 1, 30)
        );
        // A birthday at 02:30 on the spring-forward day.
        let t = birthday("02:30");
        let b = next_date(&t, &json!("03-14"), ny, utc(2027, 1, 1, 0, 0)).unwrap();
        assert_eq!(b.at, utc(2027, 3, 14, 7, 0));
    }

    #[test]
    fn cron_uses_posix_weekdays() {
        let mondays = parse_cron("0 9 * * 1").unwrap();
        // 2026-11-28 is a Saturday; the next Monday is Nov 30.
        assert_eq!(
            next_cron(&mondays, chrono_tz::UTC, utc(2026, 11, 28, 12, 0)).unwrap(),
            utc(2026, 11, 30, 9, 0)
        );
        assert!(parse_cron("0 9 * *").is_err());
        assert!(parse_cron("61 9 * * *").is_err());
    }
}
