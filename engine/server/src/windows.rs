//! Deploy windows and freezes (`[[windows]]` and `[[freezes]]` in `shiphat.toml`): when a
//! workflow or an environment may deploy. Parsed from the config into [`Windows`], which
//! answers one question: is time `T` open for a run of workflow `W` on key `K`, and if not,
//! why, and when does it next open?
//!
//! A rule applies to a run when its `applies_to` names the run's workflow, its key (the
//! concurrency key, or the workflow's name when it has none: what the environments view and
//! `PUT /locks/{key}` call an environment) or is `*`. A run is open when none of the windows
//! that apply to it exist or one of them holds the time, and no freeze that applies holds it.
//! All calendar arithmetic (zones, DST, weekdays) is jiff's, over the IANA database.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;

/// How many jumps (past a freeze, to a window's start) the search for the next open time
/// takes before it gives up. Each jump passes a freeze or reaches a window; a config with
/// more freezes back to back than this is not one a person wrote.
const MAX_JUMPS: usize = 1000;
/// How many days of windows back to back count as "never closes": a window on every day
/// from 00:00 to 24:00 is always open, and its end is not worth looking for past a week.
const MAX_OPEN_DAYS: usize = 8;

/// `[[windows]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWindow {
    applies_to: Vec<String>,
    timezone: String,
    days: Option<Vec<String>>,
    from: Option<String>,
    until: Option<String>,
}

/// `[[freezes]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFreeze {
    applies_to: Vec<String>,
    timezone: String,
    from: String,
    until: String,
    reason: String,
}

/// The checked deploy windows and freezes of a config. Empty: every time is open.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    windows: Vec<Window>,
    freezes: Vec<Freeze>,
}

/// A weekly window: on each of `days`, from `from` until `until` in `zone`; an `until` at or
/// before `from` is on the next day (`22:00`–`02:00`, or `00:00`–`00:00` for the whole day).
#[derive(Clone, Debug)]
struct Window {
    applies_to: Vec<String>,
    zone: TimeZone,
    days: Vec<Weekday>,
    from: Time,
    until: Time,
}

/// A freeze: closed from `from` until `until`, for `reason`.
#[derive(Clone, Debug)]
struct Freeze {
    applies_to: Vec<String>,
    zone: TimeZone,
    from: Timestamp,
    until: Timestamp,
    reason: String,
}

/// Whether a run may start at a time, for a run some rule applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Open, until `closes` (none when it does not close within [`MAX_OPEN_DAYS`] and before
    /// any freeze).
    Open { closes: Option<Local> },
    /// Closed, because of `why`, until `opens` (none when no open time was found).
    Closed { why: Why, opens: Option<Local> },
}

/// Why a time is closed.
#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    /// A freeze holds it.
    Frozen { reason: String, until: Local },
    /// No window that applies holds it.
    Outside,
}

/// A time, with the zone of the window or freeze it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub at: Timestamp,
    pub zone: TimeZone,
}

impl Local {
    /// RFC 3339 in UTC, as the API's other times, e.g. `2026-12-04T08:00:00.000Z`.
    pub fn rfc3339(&self) -> String {
        shiphat_store::rfc3339(self.at.as_millisecond())
    }

    /// The time in its zone, RFC 9557, e.g. `2026-12-04T09:00:00+01:00[Europe/Paris]`.
    pub fn local(&self) -> String {
        self.at.to_zoned_datetime(self.zone.clone()).to_string()
    }
}

/// What [`Windows::verdict`] says, with what applies, for the front ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub state: State,
    /// The windows that apply, in words, e.g. `mon, tue 09:00–16:00 Europe/Paris`.
    pub windows: Vec<String>,
}

impl Verdict {
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Why it is closed, in words: a freeze's reason and end, or the windows it is outside of.
    pub fn reason(&self) -> Option<String> {
        match &self.state {
            State::Open { .. } => None,
            State::Closed {
                why: Why::Frozen { reason, until },
                ..
            } => Some(format!("{reason} (frozen until {})", until.local())),
            State::Closed {
                why: Why::Outside, ..
            } => Some(format!(
                "outside its deploy windows ({})",
                self.windows.join("; ")
            )),
        }
    }

    /// When it next opens (closed) or closes (open).
    pub fn next_change(&self) -> Option<&Local> {
        match &self.state {
            State::Open { closes } => closes.as_ref(),
            State::Closed { opens, .. } => opens.as_ref(),
        }
    }
}

fn applies(names: &[String], workflow: &str, key: &str) -> bool {
    names.iter().any(|n| n == "*" || n == workflow || n == key)
}

impl Windows {
    /// Checks `[[windows]]` and `[[freezes]]`; each error names the entry (1-based) and the
    /// field, and says what is expected.
    pub(crate) fn check(
        windows: Vec<RawWindow>,
        freezes: Vec<RawFreeze>,
    ) -> Result<Windows, String> {
        let mut checked = Windows::default();
        for (i, raw) in windows.into_iter().enumerate() {
            let at = format!("windows[{}]", i + 1);
            let applies_to = check_applies_to(&at, raw.applies_to)?;
            let zone = zone(&at, &raw.timezone)?;
            let days = match raw.days {
                None => WEEK.iter().map(|(_, d)| *d).collect(),
                Some(days) if days.is_empty() => {
                    return Err(format!(
                        "`{at}.days` is empty; name at least one day, or leave `days` out for every day"
                    ));
                }
                Some(days) => days
                    .iter()
                    .map(|d| {
                        WEEK.iter()
                            .find(|(name, _)| d.eq_ignore_ascii_case(name))
                            .map(|(_, day)| *day)
                            .ok_or_else(|| {
                                format!(
                                    "`{at}.days`: unknown day `{d}`; days are `mon`, `tue`, `wed`, `thu`, `fri`, `sat` and `sun`"
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let from = clock(&at, "from", raw.from.as_deref())?;
            let until = clock(&at, "until", raw.until.as_deref())?;
            checked.windows.push(Window {
                applies_to,
                zone,
                days,
                from,
                until,
            });
        }
        for (i, raw) in freezes.into_iter().enumerate() {
            let at = format!("freezes[{}]", i + 1);
            let applies_to = check_applies_to(&at, raw.applies_to)?;
            let zone = zone(&at, &raw.timezone)?;
            let instant = |field: &str, text: &str| {
                let civil: DateTime = text.parse().map_err(|_| {
                    format!(
                        "`{at}.{field}`: `{text}` is not a date and time; write it as `2026-12-24T00:00` (or `2026-12-24` for midnight), in `timezone`"
                    )
                })?;
                zone.to_zoned_datetime(civil)
                    .map(|z| z.timestamp())
                    .map_err(|e| format!("`{at}.{field}`: `{text}`: {e}"))
            };
            let from = instant("from", &raw.from)?;
            let until = instant("until", &raw.until)?;
            if until <= from {
                return Err(format!(
                    "`{at}`: `until` ({}) must be after `from` ({})",
                    raw.until, raw.from
                ));
            }
            if raw.reason.trim().is_empty() {
                return Err(format!(
                    "`{at}.reason` is empty; say why, e.g. \"holiday freeze\": it is what a refused deploy is told"
                ));
            }
            checked.freezes.push(Freeze {
                applies_to,
                zone,
                from,
                until,
                reason: raw.reason,
            });
        }
        Ok(checked)
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.freezes.is_empty()
    }

    /// Whether a run of `workflow` on `key` may start at `at`: `None` when no window or freeze
    /// applies to it (always open).
    pub fn verdict(&self, workflow: &str, key: &str, at: Timestamp) -> Option<Verdict> {
        let windows: Vec<&Window> = self
            .windows
            .iter()
            .filter(|w| applies(&w.applies_to, workflow, key))
            .collect();
        let freezes: Vec<&Freeze> = self
            .freezes
            .iter()
            .filter(|f| applies(&f.applies_to, workflow, key))
            .collect();
        if windows.is_empty() && freezes.is_empty() {
            return None;
        }
        let rules = Rules {
            windows: &windows,
            freezes: &freezes,
        };
        Some(Verdict {
            state: rules.state(at),
            windows: windows.iter().map(|w| w.describe()).collect(),
        })
    }
}

const WEEK: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn check_applies_to(at: &str, names: Vec<String>) -> Result<Vec<String>, String> {
    if names.is_empty() || names.iter().any(|n| n.trim().is_empty()) {
        return Err(format!(
            "`{at}.applies_to` must name workflows or environments (concurrency keys), or be [\"*\"] for all"
        ));
    }
    Ok(names)
}

fn zone(at: &str, name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!("`{at}.timezone`: unknown time zone `{name}`; use an IANA name such as `Europe/Paris` or `UTC`")
    })
}

/// A time of day, `HH:MM`; `24:00` is midnight at the end of the day; none is midnight.
fn clock(at: &str, field: &str, text: Option<&str>) -> Result<Time, String> {
    match text {
        None | Some("24:00") => Ok(Time::midnight()),
        Some(text) => {
            let valid = text.len() == 5 && text.as_bytes()[2] == b':';
            match text.parse::<Time>() {
                Ok(time) if valid => Ok(time),
                _ => Err(format!(
                    "`{at}.{field}`: `{text}` is not a time of day; write it as `09:00` (24-hour clock)"
                )),
            }
        }
    }
}

impl Window {
    /// The window that opens on `date`, as `[start, end)`: `None` when the window does not
    /// open that day. A time a DST change skips is taken as the time after the gap, a time it
    /// repeats as its first occurrence (jiff's "compatible" rule, RFC 5545's).
    fn on(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        if !self.days.contains(&date.weekday()) {
            return None;
        }
        let end_date = if self.until <= self.from {
            date.tomorrow().ok()?
        } else {
            date
        };
        let at = |date: Date, time| {
            self.zone
                .to_zoned_datetime(date.to_datetime(time))
                .ok()
                .map(|z| z.timestamp())
        };
        let start = at(date, self.from)?;
        let end = at(end_date, self.until)?;
        (start < end).then_some((start, end))
    }

    /// The days in the window's zone whose window may hold or follow `at`: the day before
    /// (a window past midnight) to `ahead` days after.
    fn days_around(&self, at: Timestamp, ahead: i64) -> impl Iterator<Item = Date> + '_ {
        let today = self.zone.to_datetime(at).date();
        (-1..=ahead).filter_map(move |d| today.checked_add(d.days()).ok())
    }

    /// The end of the window holding `at`, if one does.
    fn holding(&self, at: Timestamp) -> Option<Timestamp> {
        self.days_around(at, 0)
            .filter_map(|d| self.on(d))
            .filter(|(start, end)| *start <= at && at < *end)
            .map(|(_, end)| end)
            .max()
    }

    /// The first start of this window after `at`. Every window opens on at least one day a
    /// week, so eight days ahead find it.
    fn next_start(&self, at: Timestamp) -> Option<Timestamp> {
        self.days_around(at, 8)
            .filter_map(|d| self.on(d))
            .map(|(start, _)| start)
            .find(|start| *start > at)
    }

    /// In words, e.g. `mon, tue 09:00–16:00 Europe/Paris`.
    fn describe(&self) -> String {
        let days = if self.days.len() == 7 {
            "every day".to_owned()
        } else {
            WEEK.iter()
                .filter(|(_, d)| self.days.contains(d))
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let hhmm = |t: Time| format!("{:02}:{:02}", t.hour(), t.minute());
        let until = if self.until == Time::midnight() {
            "24:00".to_owned()
        } else {
            hhmm(self.until)
        };
        let zone = self.zone.iana_name().unwrap_or("UTC");
        format!("{days} {}–{until} {zone}", hhmm(self.from))
    }
}

/// The windows and freezes that apply to one run.
struct Rules<'a> {
    windows: &'a [&'a Window],
    freezes: &'a [&'a Freeze],
}

impl Rules<'_> {
    /// The freeze holding `at` that ends last, if one does.
    fn frozen(&self, at: Timestamp) -> Option<&Freeze> {
        self.freezes
            .iter()
            .filter(|f| f.from <= at && at < f.until)
            .max_by_key(|f| f.until)
            .copied()
    }

    /// Whether `at` is inside a window, or no window applies.
    fn in_window(&self, at: Timestamp) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.holding(at).is_some())
    }

    fn state(&self, at: Timestamp) -> State {
        match (self.frozen(at), self.in_window(at)) {
            (None, true) => State::Open {
                closes: self.closes(at),
            },
            (Some(f), _) => State::Closed {
                why: Why::Frozen {
                    reason: f.reason.clone(),
                    until: Local {
                        at: f.until,
                        zone: f.zone.clone(),
                    },
                },
                opens: self.opens(at),
            },
            (None, false) => State::Closed {
                why: Why::Outside,
                opens: self.opens(at),
            },
        }
    }

    /// The first open time at or after `at`: past every freeze that holds it, and inside a
    /// window. Jumps alternate until neither moves the time.
    fn opens(&self, mut at: Timestamp) -> Option<Local> {
        let mut zone = None;
        for _ in 0..MAX_JUMPS {
            if let Some(f) = self.frozen(at) {
                at = f.until;
                zone = Some(f.zone.clone());
                continue;
            }
            if self.in_window(at) {
                return Some(Local {
                    at,
                    zone: zone.unwrap_or_else(|| {
                        self.windows
                            .first()
                            .map_or(TimeZone::UTC, |w| w.zone.clone())
                    }),
                });
            }
            let (start, w) = self
                .windows
                .iter()
                .filter_map(|w| Some((w.next_start(at)?, w)))
                .min_by_key(|(start, _)| *start)?;
            at = start;
            zone = Some(w.zone.clone());
        }
        None
    }

    /// When an open time `at` closes: the start of the next freeze, or the end of the windows
    /// holding it (windows back to back count as one), whichever comes first.
    fn closes(&self, at: Timestamp) -> Option<Local> {
        let freeze = self
            .freezes
            .iter()
            .filter(|f| f.from > at)
            .min_by_key(|f| f.from)
            .map(|f| Local {
                at: f.from,
                zone: f.zone.clone(),
            });
        let mut end = None;
        let mut t = at;
        for _ in 0..MAX_OPEN_DAYS {
            match self
                .windows
                .iter()
                .filter_map(|w| Some((w.holding(t)?, w)))
                .max_by_key(|(end, _)| *end)
            {
                Some((e, w)) => {
                    t = e;
                    end = Some(Local {
                        at: e,
                        zone: w.zone.clone(),
                    });
                }
                None => break,
            }
        }
        // Still inside a window after MAX_OPEN_DAYS ends: it does not close for the windows.
        if self.windows.iter().any(|w| w.holding(t).is_some()) {
            end = None;
        }
        match (freeze, end) {
            (Some(f), Some(e)) => Some(if f.at < e.at { f } else { e }),
            (f, e) => f.or(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<Windows, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            windows: Vec<RawWindow>,
            #[serde(default)]
            freezes: Vec<RawFreeze>,
        }
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        Windows::check(raw.windows, raw.freezes)
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The state of `deploy` on key `prod` at `time`, as (open, next change in UTC, why).
    fn state(windows: &Windows, time: &str) -> (bool, Option<String>, Option<String>) {
        let v = windows.verdict("deploy", "prod", at(time)).unwrap();
        (v.is_open(), v.next_change().map(Local::rfc3339), v.reason())
    }

    const PARIS_WEEKDAYS: &str = r#"
        [[windows]]
        applies_to = ["prod"]
        timezone = "Europe/Paris"
        days = ["mon", "tue", "wed", "thu", "fri"]
        from = "09:00"
        until = "16:00"
    "#;

    #[test]
    fn a_weekday_window_is_open_inside_and_says_when_it_closes() {
        let w = config(PARIS_WEEKDAYS).unwrap();
        // Thursday 2026-12-03, 10:00 in Paris (UTC+1).
        let (open, next, why) = state(&w, "2026-12-03T09:00:00Z");
        assert!(open);
        assert_eq!(next.as_deref(), Some("2026-12-03T15:00:00.000Z"));
        assert_eq!(why, None);
        // 16:00 is outside: `until` is exclusive, and the next start is Friday 09:00.
        let (open, next, why) = state(&w, "2026-12-03T15:00:00Z");
        assert!(!open);
        assert_eq!(next.as_deref(), Some("2026-12-04T08:00:00.000Z"));
        assert_eq!(
            why.as_deref(),
            Some("outside its deploy windows (mon, tue, wed, thu, fri 09:00–16:00 Europe/Paris)")
        );
    }

    #[test]
    fn a_weekend_waits_for_monday_morning() {
        let w = config(PARIS_WEEKDAYS).unwrap();
        // Friday 17:00, Saturday noon and Sunday 23:59 all open on Monday 2026-12-07 09:00.
        for time in [
            "2026-12-04T16:00:00Z",
            "2026-12-05T11:00:00Z",
            "2026-12-06T22:59:00Z",
        ] {
            let (open, next, _) = state(&w, time);
            assert!(!open, "{time}");
            assert_eq!(next.as_deref(), Some("2026-12-07T08:00:00.000Z"), "{time}");
        }
        let v = w
            .verdict("deploy", "prod", at("2026-12-05T11:00:00Z"))
            .unwrap();
        assert_eq!(
            v.next_change().unwrap().local(),
            "2026-12-07T09:00:00+01:00[Europe/Paris]"
        );
    }

    #[test]
    fn a_window_keeps_its_local_hours_across_dst_changes() {
        let w = config(PARIS_WEEKDAYS).unwrap();
        // Friday 2026-03-27 is UTC+1; Monday 2026-03-30, after the change on Sunday, is UTC+2.
        let (_, next, _) = state(&w, "2026-03-27T16:00:00Z");
        assert_eq!(next.as_deref(), Some("2026-03-30T07:00:00.000Z"));
        let (open, next, _) = state(&w, "2026-03-30T07:30:00Z");
        assert!(open);
        assert_eq!(next.as_deref(), Some("2026-03-30T14:00:00.000Z"));
        // And back in October: Monday 2026-10-26 is UTC+1 again.
        let (_, next, _) = state(&w, "2026-10-23T15:00:00Z");
        assert_eq!(next.as_deref(), Some("2026-10-26T08:00:00.000Z"));
    }

    #[test]
    fn a_window_that_starts_in_a_dst_gap_starts_after_it() {
        // 02:30 does not exist in Paris on 2026-03-29: the window starts at 03:00 local.
        let w = config(
            r#"
            [[windows]]
            applies_to = ["*"]
            timezone = "Europe/Paris"
            days = ["sun"]
            from = "02:30"
            until = "05:00"
            "#,
        )
        .unwrap();
        let (open, next, _) = state(&w, "2026-03-29T00:00:00Z");
        assert!(!open);
        // 03:30 CEST (the compatible reading of 02:30) is 01:30 UTC.
        assert_eq!(next.as_deref(), Some("2026-03-29T01:30:00.000Z"));
        let (open, next, _) = state(&w, "2026-03-29T02:00:00Z");
        assert!(open);
        assert_eq!(next.as_deref(), Some("2026-03-29T03:00:00.000Z"));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_opens() {
        let w = config(
            r#"
            [[windows]]
            applies_to = ["deploy"]
            timezone = "UTC"
            days = ["fri"]
            from = "22:00"
            until = "02:00"
            "#,
        )
        .unwrap();
        // Saturday 2026-12-05 01:00 is inside Friday's window.
        let (open, next, _) = state(&w, "2026-12-05T01:00:00Z");
        assert!(open);
        assert_eq!(next.as_deref(), Some("2026-12-05T02:00:00.000Z"));
        // Saturday 23:00 is not (Saturday opens no window): next Friday 22:00.
        let (open, next, _) = state(&w, "2026-12-05T23:00:00Z");
        assert!(!open);
        assert_eq!(next.as_deref(), Some("2026-12-11T22:00:00.000Z"));
    }

    #[test]
    fn windows_back_to_back_close_once_and_a_whole_week_never_closes() {
        let w = config(
            r#"
            [[windows]]
            applies_to = ["*"]
            timezone = "UTC"
            days = ["mon"]
            [[windows]]
            applies_to = ["*"]
            timezone = "UTC"
            days = ["tue"]
            until = "12:00"
            "#,
        )
        .unwrap();
        // Monday 2026-12-07 10:00: open through Tuesday noon.
        let (open, next, _) = state(&w, "2026-12-07T10:00:00Z");
        assert!(open);
        assert_eq!(next.as_deref(), Some("2026-12-08T12:00:00.000Z"));
        let w = config("[[windows]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"").unwrap();
        let (open, next, _) = state(&w, "2026-12-07T10:00:00Z");
        assert!(open);
        assert_eq!(next, None);
    }

    #[test]
    fn a_freeze_inside_a_window_closes_it_with_its_reason() {
        let text = format!(
            "{PARIS_WEEKDAYS}
            [[freezes]]
            applies_to = [\"*\"]
            timezone = \"Europe/Paris\"
            from = \"2026-12-03T12:00\"
            until = \"2026-12-03T14:00\"
            reason = \"migration\"
            "
        );
        let w = config(&text).unwrap();
        // Thursday 10:00 Paris: open, until the freeze starts at noon.
        let (open, next, _) = state(&w, "2026-12-03T09:00:00Z");
        assert!(open);
        assert_eq!(next.as_deref(), Some("2026-12-03T11:00:00.000Z"));
        // 12:30 Paris: frozen, and open again at 14:00, still inside the window.
        let (open, next, why) = state(&w, "2026-12-03T11:30:00Z");
        assert!(!open);
        assert_eq!(next.as_deref(), Some("2026-12-03T13:00:00.000Z"));
        assert_eq!(
            why.as_deref(),
            Some("migration (frozen until 2026-12-03T14:00:00+01:00[Europe/Paris])")
        );
    }

    #[test]
    fn a_freeze_that_ends_outside_hours_opens_at_the_next_window() {
        let text = format!(
            "{PARIS_WEEKDAYS}
            [[freezes]]
            applies_to = [\"prod\"]
            timezone = \"Europe/Paris\"
            from = \"2026-12-24T00:00\"
            until = \"2027-01-03T00:00\"
            reason = \"holiday freeze\"
            "
        );
        let w = config(&text).unwrap();
        // The freeze ends on Sunday 2027-01-03: the next open time is Monday 09:00.
        let v = w
            .verdict("deploy", "prod", at("2026-12-28T10:00:00Z"))
            .unwrap();
        assert!(!v.is_open());
        assert_eq!(
            v.next_change().unwrap().local(),
            "2027-01-04T09:00:00+01:00[Europe/Paris]"
        );
        assert!(
            matches!(&v.state, State::Closed { why: Why::Frozen { reason, .. }, .. } if reason == "holiday freeze")
        );
    }

    #[test]
    fn freezes_back_to_back_open_after_the_last() {
        let w = config(
            r#"
            [[freezes]]
            applies_to = ["*"]
            timezone = "UTC"
            from = "2026-12-01T00:00"
            until = "2026-12-05T00:00"
            reason = "one"
            [[freezes]]
            applies_to = ["*"]
            timezone = "Asia/Tokyo"
            from = "2026-12-05T09:00"
            until = "2026-12-10T09:00"
            reason = "two"
            "#,
        )
        .unwrap();
        let v = w
            .verdict("deploy", "prod", at("2026-12-03T00:00:00Z"))
            .unwrap();
        let opens = v.next_change().unwrap();
        assert_eq!(opens.rfc3339(), "2026-12-10T00:00:00.000Z");
        assert_eq!(opens.local(), "2026-12-10T09:00:00+09:00[Asia/Tokyo]");
    }

    #[test]
    fn rules_apply_by_workflow_key_or_star_only() {
        let w = config(PARIS_WEEKDAYS).unwrap();
        assert!(
            w.verdict("deploy", "staging", at("2026-12-05T11:00:00Z"))
                .is_none()
        );
        assert!(
            w.verdict("prod", "other", at("2026-12-05T11:00:00Z"))
                .is_some()
        );
        assert!(Windows::default().is_empty());
    }

    #[test]
    fn mistakes_say_what_to_fix() {
        let cases = [
            (
                "[[windows]]\napplies_to = []\ntimezone = \"UTC\"",
                "`windows[1].applies_to` must name workflows or environments",
            ),
            (
                "[[windows]]\napplies_to = [\"*\"]\ntimezone = \"Europe/Pariss\"",
                "unknown time zone `Europe/Pariss`; use an IANA name",
            ),
            (
                "[[windows]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\ndays = [\"monday\"]",
                "unknown day `monday`; days are `mon`",
            ),
            (
                "[[windows]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nfrom = \"9am\"",
                "`windows[1].from`: `9am` is not a time of day; write it as `09:00`",
            ),
            (
                "[[windows]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nfrom = \"9:00\"",
                "`9:00` is not a time of day",
            ),
            (
                "[[windows]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nhours = 3",
                "unknown field `hours`",
            ),
            (
                "[[freezes]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nfrom = \"Dec 24\"\nuntil = \"2027-01-03T00:00\"\nreason = \"x\"",
                "`freezes[1].from`: `Dec 24` is not a date and time; write it as `2026-12-24T00:00`",
            ),
            (
                "[[freezes]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nfrom = \"2027-01-03T00:00\"\nuntil = \"2026-12-24T00:00\"\nreason = \"x\"",
                "`freezes[1]`: `until` (2026-12-24T00:00) must be after `from`",
            ),
            (
                "[[freezes]]\napplies_to = [\"*\"]\ntimezone = \"UTC\"\nfrom = \"2026-12-24T00:00\"\nuntil = \"2027-01-03T00:00\"\nreason = \" \"",
                "`freezes[1].reason` is empty",
            ),
        ];
        for (text, expected) in cases {
            let err = config(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(err.contains(expected), "{err}\n(wanted: {expected})");
        }
    }
}
