//! Quotas: which apply to a user, the period they count over, and whether a job fits.
//!
//! A period is identified by its start instant (midnight in the policy's time zone), so the
//! spending of a period is a sum over ledger entries whose timestamps fall in
//! `[start, end)`. A clock that steps back or forward moves a job into the period its
//! timestamp belongs to; it never resets a period's total or counts a job twice.

use std::collections::HashMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use printfleet_crds::AccountingPolicySpec;
use printfleet_crds::policy::{QuotaAction, QuotaPeriod};
use printfleet_crds::validate::{parse_money, validate_policy};

use super::pricing::{Money, PolicyError};
use super::usage::Usage;

/// The start (inclusive) and end (exclusive) of the period containing `at`: the calendar
/// day, the ISO week (from Monday) or the calendar month in `tz`. Periods start at local
/// midnight, or at the first instant after it when a DST change skips midnight; a day is
/// 23 or 25 hours long across DST changes.
pub fn period_bounds(period: QuotaPeriod, at: Timestamp, tz: &TimeZone) -> (Timestamp, Timestamp) {
    let date = tz.to_datetime(at).date();
    let start = match period {
        QuotaPeriod::Day => Some(date),
        QuotaPeriod::Week => date
            .checked_sub(i64::from(date.weekday().to_monday_zero_offset()).days())
            .ok(),
        QuotaPeriod::Month => Some(date.first_of_month()),
    };
    let length = match period {
        QuotaPeriod::Day => 1.day(),
        QuotaPeriod::Week => 1.week(),
        QuotaPeriod::Month => 1.month(),
    };
    let end = start.and_then(|start| start.checked_add(length).ok());
    // Only dates at the ends of jiff's range (years -9999 and 9999) have no neighbour.
    (
        start.map_or(Timestamp::MIN, |start| midnight(start, tz)),
        end.map_or(Timestamp::MAX, |end| midnight(end, tz)),
    )
}

fn midnight(date: Date, tz: &TimeZone) -> Timestamp {
    date.to_zoned(tz.clone())
        .map_or(Timestamp::MAX, |zoned| zoned.timestamp())
}

/// One quota period, identified by its bounds (a day and a month that start together differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Whose spending a quota limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One user's jobs (a `user` quota, or an `allUsers` quota applied to this user).
    User(String),
    /// The jobs of all members of a group together.
    Group(String),
}

/// Who a policy's quota is about.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
    AllUsers,
}

/// A policy quota, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    subject: Subject,
    period: QuotaPeriod,
    max_amount: Option<i64>,
    max_impressions: Option<u64>,
    action: QuotaAction,
}

/// The quotas of an `AccountingPolicy` and its time zone, parsed once.
#[derive(Clone, Debug)]
pub struct QuotaRules {
    rules: Vec<Rule>,
    time_zone: TimeZone,
}

/// A quota that applies to one submission, resolved to its scope and current period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicableQuota {
    /// Index in the policy's `spec.quotas`.
    pub rule: usize,
    pub scope: Scope,
    pub period: Period,
    /// In minor units of the policy's currency.
    pub max_amount: Option<i64>,
    pub max_impressions: Option<u64>,
    pub action: QuotaAction,
}

impl QuotaRules {
    /// Parses a policy's quotas and time zone (validating the whole policy first). No time
    /// zone means UTC; a name is looked up in the system's time zone database.
    pub fn from_policy(spec: &AccountingPolicySpec) -> Result<QuotaRules, PolicyError> {
        validate_policy(spec).map_err(PolicyError)?;
        let time_zone = match &spec.time_zone {
            Some(name) => TimeZone::get(name).map_err(|error| {
                PolicyError::field("spec.timeZone", format!("{name:?}: {error}"))
            })?,
            None => TimeZone::UTC,
        };
        let mut rules = Vec::with_capacity(spec.quotas.len());
        for (index, quota) in spec.quotas.iter().enumerate() {
            let subject = match (&quota.user, &quota.group) {
                (Some(user), _) => Subject::User(user.clone()),
                (None, Some(group)) => Subject::Group(group.clone()),
                (None, None) => Subject::AllUsers,
            };
            let max_amount = quota
                .max_amount
                .as_deref()
                .map(|amount| parse_money(amount, &spec.currency))
                .transpose()
                .map_err(|error| {
                    PolicyError::field(&format!("spec.quotas[{index}].maxAmount"), error)
                })?;
            rules.push(Rule {
                subject,
                period: quota.period,
                max_amount,
                max_impressions: quota.max_impressions,
                action: quota.action,
            });
        }
        Ok(QuotaRules { rules, time_zone })
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// The quotas that limit a job of `user` (member of `groups`) submitted at `at`:
    /// every quota of the user's groups (shared by the group's members), the quotas naming
    /// the user, and the `allUsers` quotas — except where a quota naming the user sets the
    /// same period: it replaces the `allUsers` one (a personal allowance, larger or smaller).
    pub fn applicable(&self, user: &str, groups: &[String], at: Timestamp) -> Vec<ApplicableQuota> {
        let personal = |period: QuotaPeriod| {
            self.rules
                .iter()
                .any(|rule| rule.period == period && rule.subject == Subject::User(user.into()))
        };
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| {
                let scope = match &rule.subject {
                    Subject::User(name) if name == user => Scope::User(user.to_owned()),
                    Subject::Group(group) if groups.contains(group) => Scope::Group(group.clone()),
                    Subject::AllUsers if !personal(rule.period) => Scope::User(user.to_owned()),
                    _ => return None,
                };
                let (start, end) = period_bounds(rule.period, at, &self.time_zone);
                Some(ApplicableQuota {
                    rule: index,
                    scope,
                    period: Period { start, end },
                    max_amount: rule.max_amount,
                    max_impressions: rule.max_impressions,
                    action: rule.action,
                })
            })
            .collect()
    }
}

/// Money and impressions charged in one scope and period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Minor units of the policy's currency.
    pub amount: i64,
    pub impressions: u64,
}

/// What a job costs, for the quota check.
pub type Charge = Totals;

impl Charge {
    pub fn of(price: &Money, usage: &Usage) -> Charge {
        Totals {
            amount: price.minor,
            impressions: usage.impressions,
        }
    }
}

/// What was already charged, per scope and period (read from the ledger by the caller, in
/// the same transaction that records the new charge). A missing entry is a period with
/// nothing charged yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    totals: HashMap<(Scope, Period), Totals>,
}

impl Spent {
    pub fn set(&mut self, scope: Scope, period: Period, totals: Totals) {
        self.totals.insert((scope, period), totals);
    }

    pub fn get(&self, scope: &Scope, period: &Period) -> Totals {
        self.totals
            .get(&(scope.clone(), *period))
            .copied()
            .unwrap_or_default()
    }
}

/// Which limit a job would exceed, and by how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    Amount { max: i64, would_be: i64 },
    Impressions { max: u64, would_be: u64 },
}

/// The quota that decided, for the job's reasons and the ledger's flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tripped {
    /// Index in the policy's `spec.quotas`.
    pub rule: usize,
    pub scope: Scope,
    pub period: Period,
    pub limit: Limit,
}

/// What admission does with a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaDecision {
    /// Within every quota.
    Accept,
    /// Over a quota whose action is allow-and-flag: print it, flag the ledger entry.
    AllowAndFlag(Tripped),
    /// Over a quota whose action is hold: keep it `pending-held` with
    /// `account-limit-reached` until an operator releases it.
    Hold(Tripped),
    /// Over a quota whose action is reject: `client-error-account-limit-reached`.
    Reject(Tripped),
}

/// Whether a job charging `this_job` fits every quota. A job may bring a total exactly to
/// its limit; beyond it the quota trips. When several trip, the strictest action wins
/// (reject, then hold, then allow-and-flag), and among equals the first in the policy.
pub fn decide(quotas: &[ApplicableQuota], spent: &Spent, this_job: &Charge) -> QuotaDecision {
    let mut decision = QuotaDecision::Accept;
    for quota in quotas {
        let Some(limit) = exceeded(quota, spent.get(&quota.scope, &quota.period), this_job) else {
            continue;
        };
        let tripped = Tripped {
            rule: quota.rule,
            scope: quota.scope.clone(),
            period: quota.period,
            limit,
        };
        let candidate = match quota.action {
            QuotaAction::Reject => QuotaDecision::Reject(tripped),
            QuotaAction::Hold => QuotaDecision::Hold(tripped),
            QuotaAction::AllowAndFlag => QuotaDecision::AllowAndFlag(tripped),
        };
        if severity(&candidate) > severity(&decision) {
            decision = candidate;
        }
    }
    decision
}

fn exceeded(quota: &ApplicableQuota, spent: Totals, this_job: &Charge) -> Option<Limit> {
    let amount = spent.amount.saturating_add(this_job.amount);
    let impressions = spent.impressions.saturating_add(this_job.impressions);
    if let Some(max) = quota.max_amount
        && amount > max
    {
        return Some(Limit::Amount {
            max,
            would_be: amount,
        });
    }
    match quota.max_impressions {
        Some(max) if impressions > max => Some(Limit::Impressions {
            max,
            would_be: impressions,
        }),
        _ => None,
    }
}

fn severity(decision: &QuotaDecision) -> u8 {
    match decision {
        QuotaDecision::Accept => 0,
        QuotaDecision::AllowAndFlag(_) => 1,
        QuotaDecision::Hold(_) => 2,
        QuotaDecision::Reject(_) => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use printfleet_crds::policy::Quota;

    /// Europe/Berlin's rules as a POSIX TZ string, so tests need no time zone database.
    fn berlin() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn bounds(period: QuotaPeriod, at: &str) -> (Timestamp, Timestamp) {
        period_bounds(period, ts(at), &berlin())
    }

    #[test]
    fn days_are_23_or_25_hours_across_dst() {
        let (start, end) = bounds(QuotaPeriod::Day, "2025-03-30T12:00:00Z");
        assert_eq!(
            (start, end),
            (ts("2025-03-29T23:00:00Z"), ts("2025-03-30T22:00:00Z"))
        );
        assert_eq!(end.duration_since(start), SignedDuration::from_hours(23));
        let (start, end) = bounds(QuotaPeriod::Day, "2025-10-26T12:00:00Z");
        assert_eq!(
            (start, end),
            (ts("2025-10-25T22:00:00Z"), ts("2025-10-26T23:00:00Z"))
        );
        assert_eq!(end.duration_since(start), SignedDuration::from_hours(25));
        // 02:30 local on the autumn day happens twice; both belong to the same day.
        assert_eq!(bounds(QuotaPeriod::Day, "2025-10-26T00:30:00Z").0, start);
        assert_eq!(bounds(QuotaPeriod::Day, "2025-10-26T01:30:00Z").0, start);
    }

    #[test]
    fn weeks_start_on_monday() {
        // Sunday 2025-03-30, the day DST starts: the week began Monday 24 March (CET).
        let (start, end) = bounds(QuotaPeriod::Week, "2025-03-30T21:59:59Z");
        assert_eq!(
            (start, end),
            (ts("2025-03-23T23:00:00Z"), ts("2025-03-30T22:00:00Z"))
        );
        // One second later it is Monday 31 March 00:00 CEST: the next week.
        assert_eq!(bounds(QuotaPeriod::Week, "2025-03-30T22:00:00Z").0, end);
        // A week across the new year.
        let (start, _) = bounds(QuotaPeriod::Week, "2026-01-01T12:00:00Z");
        assert_eq!(start, ts("2025-12-28T23:00:00Z"));
    }

    #[test]
    fn months_end_at_local_midnight() {
        let (start, end) = bounds(QuotaPeriod::Month, "2024-02-29T22:59:59Z");
        assert_eq!(
            (start, end),
            (ts("2024-01-31T23:00:00Z"), ts("2024-02-29T23:00:00Z"))
        );
        // 2024-02-29T23:00Z is already 1 March in Berlin.
        assert_eq!(bounds(QuotaPeriod::Month, "2024-02-29T23:00:00Z").0, end);
        // March is 31 days minus the DST hour.
        let (start, end) = bounds(QuotaPeriod::Month, "2025-03-15T00:00:00Z");
        assert_eq!(
            end.duration_since(start),
            SignedDuration::from_hours(31 * 24 - 1)
        );
        // Late on the 31st local time is still that month, though UTC says the 1st is near.
        let (start, _) = bounds(QuotaPeriod::Month, "2025-01-31T22:30:00Z");
        assert_eq!(start, ts("2024-12-31T23:00:00Z"));
    }

    #[test]
    fn a_skipped_midnight_starts_the_day_at_the_next_instant() {
        // Brazil until 2019: DST began at midnight, so 15 October 2017 had no 00:00.
        let sao_paulo = TimeZone::posix("<-03>3<-02>,M10.3.0/0,M2.3.0/0").unwrap();
        let (start, end) = period_bounds(QuotaPeriod::Day, ts("2017-10-15T12:00:00Z"), &sao_paulo);
        assert_eq!(start, ts("2017-10-15T03:00:00Z"));
        assert_eq!(end, ts("2017-10-16T02:00:00Z"));
    }

    #[test]
    fn periods_tile_time_without_gaps_or_overlaps() {
        for period in [QuotaPeriod::Day, QuotaPeriod::Week, QuotaPeriod::Month] {
            let mut at = ts("2024-12-20T00:00:00Z");
            let (mut start, mut end) = period_bounds(period, at, &berlin());
            while at < ts("2026-01-10T00:00:00Z") {
                at += SignedDuration::from_mins(59);
                let bounds = period_bounds(period, at, &berlin());
                assert!(bounds.0 <= at && at < bounds.1, "{period:?} {at}");
                if bounds.0 != start {
                    assert_eq!(
                        bounds.0, end,
                        "{period:?} {at}: next period starts at the end"
                    );
                    (start, end) = bounds;
                }
            }
        }
    }

    fn quota(subject: (&str, &str), period: QuotaPeriod, max: &str, action: QuotaAction) -> Quota {
        Quota {
            user: (subject.0 == "user").then(|| subject.1.to_owned()),
            group: (subject.0 == "group").then(|| subject.1.to_owned()),
            all_users: subject.0 == "all",
            period,
            max_amount: Some(max.into()),
            max_impressions: None,
            action,
        }
    }

    fn rules(quotas: Vec<Quota>) -> QuotaRules {
        QuotaRules::from_policy(&AccountingPolicySpec {
            currency: "EUR".into(),
            quotas,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn user_group_and_all_users_quotas_apply() {
        let rules = rules(vec![
            quota(("all", ""), QuotaPeriod::Month, "10", QuotaAction::Reject),
            quota(
                ("user", "boss"),
                QuotaPeriod::Month,
                "100",
                QuotaAction::Reject,
            ),
            quota(
                ("group", "staff"),
                QuotaPeriod::Week,
                "50",
                QuotaAction::Hold,
            ),
            quota(
                ("all", ""),
                QuotaPeriod::Day,
                "2",
                QuotaAction::AllowAndFlag,
            ),
        ]);
        let at = ts("2025-06-11T10:00:00Z");
        let applicable = |user: &str, groups: &[&str]| {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            rules
                .applicable(user, &groups, at)
                .into_iter()
                .map(|q| (q.rule, q.scope))
                .collect::<Vec<_>>()
        };
        let user = |name: &str| Scope::User(name.into());
        assert_eq!(
            applicable("alice", &[]),
            [(0, user("alice")), (3, user("alice"))]
        );
        assert_eq!(
            applicable("alice", &["staff", "other"]),
            [
                (0, user("alice")),
                (2, Scope::Group("staff".into())),
                (3, user("alice"))
            ]
        );
        // The boss's own monthly quota replaces the all-users monthly one, not the daily one.
        assert_eq!(
            applicable("boss", &[]),
            [(1, user("boss")), (3, user("boss"))]
        );
        let month = rules.applicable("alice", &[], at)[0].period;
        assert_eq!(
            (month.start, month.end),
            (ts("2025-06-01T00:00:00Z"), ts("2025-07-01T00:00:00Z"))
        );
        assert_eq!(rules.applicable("alice", &[], at)[0].max_amount, Some(1000));
    }

    fn spent_on(quotas: &[ApplicableQuota], index: usize, amount: i64) -> Spent {
        let mut spent = Spent::default();
        spent.set(
            quotas[index].scope.clone(),
            quotas[index].period,
            Totals {
                amount,
                impressions: 0,
            },
        );
        spent
    }

    fn charge(amount: i64, impressions: u64) -> Charge {
        Charge {
            amount,
            impressions,
        }
    }

    #[test]
    fn a_job_may_reach_the_limit_but_not_pass_it() {
        let rules = rules(vec![quota(
            ("all", ""),
            QuotaPeriod::Month,
            "10",
            QuotaAction::Reject,
        )]);
        let quotas = rules.applicable("alice", &[], ts("2025-06-11T10:00:00Z"));
        let spent = spent_on(&quotas, 0, 900);
        assert_eq!(
            decide(&quotas, &spent, &charge(100, 1)),
            QuotaDecision::Accept
        );
        let QuotaDecision::Reject(tripped) = decide(&quotas, &spent, &charge(101, 1)) else {
            panic!("expected a rejection");
        };
        assert_eq!(tripped.rule, 0);
        assert_eq!(tripped.scope, Scope::User("alice".into()));
        assert_eq!(
            tripped.limit,
            Limit::Amount {
                max: 1000,
                would_be: 1001
            }
        );
        // Another user's spending is not alice's.
        let bob = rules.applicable("bob", &[], ts("2025-06-11T10:00:00Z"));
        assert_eq!(
            decide(&bob, &spent, &charge(1000, 1)),
            QuotaDecision::Accept
        );
    }

    #[test]
    fn impression_limits_trip_too() {
        let mut quota = quota(
            ("group", "lab"),
            QuotaPeriod::Day,
            "1000",
            QuotaAction::Hold,
        );
        quota.max_amount = None;
        quota.max_impressions = Some(100);
        let rules = rules(vec![quota]);
        let quotas = rules.applicable("alice", &["lab".into()], ts("2025-06-11T10:00:00Z"));
        let mut spent = Spent::default();
        spent.set(
            Scope::Group("lab".into()),
            quotas[0].period,
            Totals {
                amount: 0,
                impressions: 95,
            },
        );
        assert_eq!(
            decide(&quotas, &spent, &charge(0, 5)),
            QuotaDecision::Accept
        );
        let QuotaDecision::Hold(tripped) = decide(&quotas, &spent, &charge(0, 6)) else {
            panic!("expected a hold");
        };
        assert_eq!(
            tripped.limit,
            Limit::Impressions {
                max: 100,
                would_be: 101
            }
        );
    }

    #[test]
    fn the_strictest_tripped_action_wins() {
        let rules = rules(vec![
            quota(
                ("all", ""),
                QuotaPeriod::Day,
                "1",
                QuotaAction::AllowAndFlag,
            ),
            quota(("all", ""), QuotaPeriod::Week, "1", QuotaAction::Hold),
            quota(("all", ""), QuotaPeriod::Month, "5", QuotaAction::Reject),
        ]);
        let quotas = rules.applicable("alice", &[], ts("2025-06-11T10:00:00Z"));
        let spent = Spent::default();
        assert_eq!(
            decide(&quotas, &spent, &charge(100, 1)),
            QuotaDecision::Accept
        );
        assert!(
            matches!(decide(&quotas, &spent, &charge(101, 1)), QuotaDecision::Hold(t) if t.rule == 1)
        );
        assert!(
            matches!(decide(&quotas, &spent, &charge(501, 1)), QuotaDecision::Reject(t) if t.rule == 2)
        );
        let flag_only = rules_with_one_flag();
        let quotas = flag_only.applicable("alice", &[], ts("2025-06-11T10:00:00Z"));
        assert!(
            matches!(decide(&quotas, &spent, &charge(101, 1)), QuotaDecision::AllowAndFlag(t) if t.rule == 0)
        );
    }

    fn rules_with_one_flag() -> QuotaRules {
        rules(vec![quota(
            ("all", ""),
            QuotaPeriod::Day,
            "1",
            QuotaAction::AllowAndFlag,
        )])
    }

    #[test]
    fn a_clock_step_neither_resets_nor_doubles_a_period() {
        let rules = rules(vec![quota(
            ("all", ""),
            QuotaPeriod::Month,
            "10",
            QuotaAction::Reject,
        )]);
        let tz = TimeZone::UTC;
        let before = ts("2025-01-31T23:59:30Z");
        let january = rules.applicable("alice", &[], before)[0].period;
        // Nine euros charged in January.
        let mut spent = Spent::default();
        spent.set(
            Scope::User("alice".into()),
            january,
            Totals {
                amount: 900,
                impressions: 9,
            },
        );
        // The clock jumps ahead into February, then steps back 90 s into January.
        let after_step_forward = ts("2025-02-01T00:00:30Z");
        let february = rules.applicable("alice", &[], after_step_forward)[0].period;
        assert_ne!(february, january);
        assert_eq!(
            spent.get(&Scope::User("alice".into()), &february),
            Totals::default()
        );
        let stepped_back = rules.applicable("alice", &[], ts("2025-01-31T23:59:00Z"));
        // Back in January the same period (same start) is found with its nine euros: not reset.
        assert_eq!(stepped_back[0].period, january);
        assert_eq!(
            period_bounds(QuotaPeriod::Month, before, &tz).0,
            january.start
        );
        assert!(matches!(
            decide(&stepped_back, &spent, &charge(200, 1)),
            QuotaDecision::Reject(_)
        ));
        // And a restart recomputes the same key from the same timestamp: nothing doubles.
        let restarted = rules.applicable("alice", &[], before);
        assert_eq!(
            decide(&restarted, &spent, &charge(100, 1)),
            QuotaDecision::Accept
        );
    }

    #[test]
    fn time_zone_names_are_checked() {
        let mut spec = AccountingPolicySpec {
            currency: "EUR".into(),
            time_zone: Some("UTC".into()),
            ..Default::default()
        };
        assert!(QuotaRules::from_policy(&spec).is_ok());
        spec.time_zone = Some("Mars/Olympus_Mons".into());
        let error = QuotaRules::from_policy(&spec).unwrap_err();
        assert_eq!(error.0[0].field, "spec.timeZone");
    }
}
