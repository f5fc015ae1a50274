//! Send etiquette for marketing mail: quiet hours in the contact's local time and a frequency
//! cap across marketing workflows, configured in `[sending]` and overridable per workflow.
//! Pure decisions; `send` applies them and records the outcome. Transactional mail is exempt.

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;

use crate::workflow::engine::next_local_time;
use crate::workflow::model::{FrequencyCap, Override, PolicyOverrides, QuietHours};

/// The etiquette that applies to one workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub quiet_hours: Option<QuietHours>,
    pub frequency_cap: Option<FrequencyCap>,
}

impl Policy {
    /// The configured defaults with a workflow's overrides applied.
    pub fn for_workflow(defaults: Policy, overrides: &PolicyOverrides) -> Policy {
        fn pick<T: Copy>(default: Option<T>, o: Override<T>) -> Option<T> {
            match o {
                Override::Inherit => default,
                Override::Off => None,
                Override::On(v) => Some(v),
            }
        }
        Policy {
            quiet_hours: pick(defaults.quiet_hours, overrides.quiet_hours),
            frequency_cap: pick(defaults.frequency_cap, overrides.frequency_cap),
        }
    }
}

fn inside(local: NaiveTime, window: &QuietHours) -> bool {
    if window.start <= window.end {
        local >= window.start && local < window.end
    } else {
        // The window spans midnight, e.g. 21:00–08:00.
        local >= window.start || local < window.end
    }
}

/// When a send due at `now` may go out: `None` if now is outside the quiet window, else the
/// window's end in the contact's zone.
pub fn quiet_until(now: DateTime<Utc>, zone: Tz, window: &QuietHours) -> Option<DateTime<Utc>> {
    if window.start == window.end || !inside(now.with_timezone(&zone).time(), window) {
        return None;
    }
    Some(next_local_time(now, zone, window.end, &[]))
}

/// What the frequency cap says about one more send, given the send times (any order) of the
/// contact's marketing mail within the cap's window.
pub fn cap_allows(
    now: DateTime<Utc>,
    cap: &FrequencyCap,
    recent_sends: &[DateTime<Utc>],
) -> CapDecision {
    let since = now - cap.per.0;
    let mut within: Vec<DateTime<Utc>> = recent_sends
        .iter()
        .copied()
        .filter(|t| *t > since)
        .collect();
    if within.len() < cap.max as usize {
        return CapDecision::Allowed;
    }
    within.sort();
    // The send that must leave the window for one more to fit.
    let blocking = within[within.len() - cap.max as usize];
    CapDecision::Over {
        until: blocking + cap.per.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapDecision {
    Allowed,
    /// Over the cap until this instant.
    Over {
        until: DateTime<Utc>,
    },
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::workflow::model::{CapOutcome, Duration};

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    #[test]
    fn quiet_hours_spanning_midnight() {
        let window = QuietHours {
            start: t(21, 0),
            end: t(8, 0),
        };
        let zone: Tz = "America/New_York".parse().unwrap();
        // 23:30 New York (04:30 UTC next day in November, EST = UTC-5).
        let late = Utc.with_ymd_and_hms(2026, 11, 3, 4, 30, 0).unwrap();
        assert_eq!(
            quiet_until(late, zone, &window),
            Some(Utc.with_ymd_and_hms(2026, 11, 3, 13, 0, 0).unwrap())
        );
        // 02:00 local: still quiet, same morning.
        let night = Utc.with_ymd_and_hms(2026, 11, 3, 7, 0, 0).unwrap();
        assert_eq!(
            quiet_until(night, zone, &window),
            Some(Utc.with_ymd_and_hms(2026, 11, 3, 13, 0, 0).unwrap())
        );
        // 10:00 local: fine.
        let day = Utc.with_ymd_and_hms(2026, 11, 3, 15, 0, 0).unwrap();
        assert_eq!(quiet_until(day, zone, &window), None);
        // Exactly at the end: fine; exactly at the start: quiet.
        assert_eq!(
            quiet_until(
                Utc.with_ymd_and_hms(2026, 11, 3, 13, 0, 0).unwrap(),
                zone,
                &window
            ),
            None
        );
        assert!(
            quiet_until(
                Utc.with_ymd_and_hms(2026, 11, 4, 2, 0, 0).unwrap(),
                zone,
                &window
            )
            .is_some()
        );
    }

    #[test]
    fn cap_counts_a_sliding_window() {
        let cap = FrequencyCap {
            max: 2,
            per: Duration(TimeDelta::days(1)),
            outcome: CapOutcome::Skip,
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap();
        assert_eq!(
            cap_allows(now, &cap, &[now - TimeDelta::hours(3)]),
            CapDecision::Allowed
        );
        let sends = [
            now - TimeDelta::hours(3),
            now - TimeDelta::hours(20),
            now - TimeDelta::hours(30),
        ];
        assert_eq!(
            cap_allows(now, &cap, &sends),
            CapDecision::Over {
                until: now + TimeDelta::hours(4)
            }
        );
    }

    #[test]
    fn workflow_overrides_apply() {
        let qh = QuietHours {
            start: t(21, 0),
            end: t(8, 0),
        };
        let defaults = Policy {
            quiet_hours: Some(qh),
            frequency_cap: None,
        };
        let off = PolicyOverrides {
            quiet_hours: Override::Off,
            ..Default::default()
        };
        assert_eq!(Policy::for_workflow(defaults, &off).quiet_hours, None);
        assert_eq!(
            Policy::for_workflow(defaults, &PolicyOverrides::default()),
            defaults
        );
    }
}
