//! Prices of jobs, in exact integer minor units of the policy's currency.

use std::collections::HashMap;
use std::fmt;

use printfleet_crds::AccountingPolicySpec;
use printfleet_crds::validate::{
    DECIMAL_MAX_PLACES, FieldError, currency_exponent, parse_decimal, parse_money, validate_policy,
};

use super::usage::Usage;

/// ISO 4217's code for "no currency": what a queue without a policy is priced in.
pub const NO_CURRENCY: &str = "XXX";

/// An amount of money: integer minor units (cents for EUR, yen for JPY) of a currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: String,
}

impl fmt::Display for Money {
    /// `1.05 EUR`, `500 JPY`, `-0.125 KWD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let places = currency_exponent(&self.currency);
        let sign = if self.minor < 0 { "-" } else { "" };
        let magnitude = self.minor.unsigned_abs();
        if places == 0 {
            return write!(f, "{sign}{magnitude} {}", self.currency);
        }
        let scale = 10_u64.pow(places);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            magnitude / scale,
            magnitude % scale,
            self.currency,
            width = places as usize
        )
    }
}

/// A policy that does not validate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid AccountingPolicy: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PolicyError(pub Vec<FieldError>);

impl PolicyError {
    pub(crate) fn field(field: &str, reason: impl fmt::Display) -> PolicyError {
        PolicyError(vec![FieldError {
            field: field.to_owned(),
            reason: reason.to_string(),
        }])
    }
}

/// Prices per impression in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rates {
    mono: i64,
    color: i64,
}

/// The prices of an `AccountingPolicy`, parsed once when the configuration loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceList {
    currency: String,
    rates: Rates,
    by_media: HashMap<String, Rates>,
    /// Multiplier for two-sided impressions in 1/10 000 (10 000 = 1).
    duplex_factor: i64,
    per_job: i64,
}

/// Units of [`PriceList::duplex_factor`]: the factor has at most 4 decimal places.
const FACTOR_ONE: i64 = 10_i64.pow(DECIMAL_MAX_PLACES);

impl PriceList {
    /// Parses a policy's prices (validating the whole policy first).
    ///
    /// A missing color price is the mono price; a missing mono price is zero; a media entry
    /// overrides only the prices it sets; no duplex factor means 1.
    pub fn from_policy(spec: &AccountingPolicySpec) -> Result<PriceList, PolicyError> {
        validate_policy(spec).map_err(PolicyError)?;
        let currency = spec.currency.as_str();
        let money = |field: &str, amount: &Option<String>| -> Result<Option<i64>, PolicyError> {
            amount
                .as_deref()
                .map(|amount| parse_money(amount, currency))
                .transpose()
                .map_err(|error| PolicyError::field(field, error))
        };
        let prices = &spec.prices;
        let mono = money("spec.prices.monoImpression", &prices.mono_impression)?.unwrap_or(0);
        let color = money("spec.prices.colorImpression", &prices.color_impression)?.unwrap_or(mono);
        let rates = Rates { mono, color };
        let mut by_media = HashMap::new();
        for (index, media) in prices.media.iter().enumerate() {
            let field = |name: &str| format!("spec.prices.media[{index}].{name}");
            let mono = money(&field("monoImpression"), &media.mono_impression)?;
            let color = money(&field("colorImpression"), &media.color_impression)?;
            by_media.insert(
                media.media.clone(),
                Rates {
                    mono: mono.unwrap_or(rates.mono),
                    color: color.unwrap_or(rates.color),
                },
            );
        }
        let duplex_factor = match &prices.duplex_factor {
            Some(factor) => parse_decimal(factor, DECIMAL_MAX_PLACES)
                .map_err(|error| PolicyError::field("spec.prices.duplexFactor", error))?,
            None => FACTOR_ONE,
        };
        Ok(PriceList {
            currency: spec.currency.clone(),
            rates,
            by_media,
            duplex_factor,
            per_job: money("spec.prices.perJob", &prices.per_job)?.unwrap_or(0),
        })
    }

    /// The prices of a queue without a policy: everything is counted, at zero, in
    /// [`NO_CURRENCY`].
    pub fn free() -> PriceList {
        PriceList {
            currency: NO_CURRENCY.to_owned(),
            rates: Rates::default(),
            by_media: HashMap::new(),
            duplex_factor: FACTOR_ONE,
            per_job: 0,
        }
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// The price of a job: impressions at the mono or color rate of its media (the default
    /// rates for media without an entry, or when no media is known), times the duplex factor
    /// when two-sided, plus the per-job fee. The product is exact and rounded once per job,
    /// half up, to the currency's minor unit. Amounts beyond `i64` saturate.
    pub fn price(&self, usage: &Usage, media: Option<&str>) -> Money {
        let rates = media
            .and_then(|media| self.by_media.get(media))
            .unwrap_or(&self.rates);
        let rate = if usage.color { rates.color } else { rates.mono };
        let factor = if usage.two_sided {
            self.duplex_factor
        } else {
            FACTOR_ONE
        };
        // In 1/10 000 of a minor unit; all terms are non-negative.
        let one = i128::from(FACTOR_ONE);
        let total = i128::from(usage.impressions)
            .checked_mul(i128::from(rate))
            .and_then(|amount| amount.checked_mul(i128::from(factor)))
            .and_then(|exact| exact.checked_add(one / 2))
            .map(|exact| exact / one)
            .and_then(|minor| minor.checked_add(i128::from(self.per_job)))
            .and_then(|minor| i64::try_from(minor).ok());
        Money {
            minor: total.unwrap_or(i64::MAX),
            currency: self.currency.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use printfleet_crds::policy::{MediaPrice, Prices};

    fn policy(currency: &str, prices: Prices) -> AccountingPolicySpec {
        AccountingPolicySpec {
            currency: currency.into(),
            prices,
            ..Default::default()
        }
    }

    fn usage(impressions: u64, color: bool, two_sided: bool) -> Usage {
        Usage {
            impressions,
            sheets: if two_sided {
                impressions.div_ceil(2)
            } else {
                impressions
            },
            color,
            two_sided,
        }
    }

    fn eur(minor: i64) -> Money {
        Money {
            minor,
            currency: "EUR".into(),
        }
    }

    fn office() -> PriceList {
        PriceList::from_policy(&policy(
            "EUR",
            Prices {
                mono_impression: Some("0.05".into()),
                color_impression: Some("0.25".into()),
                per_job: Some("0.10".into()),
                duplex_factor: Some("0.8".into()),
                media: vec![MediaPrice {
                    media: "iso_a3_297x420mm".into(),
                    mono_impression: Some("0.10".into()),
                    color_impression: None,
                }],
            },
        ))
        .unwrap()
    }

    #[test]
    fn mono_and_color_impressions_plus_the_job_fee() {
        let prices = office();
        assert_eq!(prices.price(&usage(10, false, false), None), eur(60));
        assert_eq!(prices.price(&usage(10, true, false), None), eur(260));
        assert_eq!(prices.price(&usage(0, true, false), None), eur(10));
    }

    #[test]
    fn media_overrides_only_what_they_set() {
        let prices = office();
        let a3 = Some("iso_a3_297x420mm");
        assert_eq!(prices.price(&usage(10, false, false), a3), eur(110));
        // No color price for A3: the default color price applies.
        assert_eq!(prices.price(&usage(10, true, false), a3), eur(260));
        // Unknown media: default prices.
        assert_eq!(
            prices.price(&usage(10, false, false), Some("na_letter_8.5x11in")),
            eur(60)
        );
    }

    #[test]
    fn duplex_factor_is_exact_and_rounded_half_up_once_per_job() {
        let prices = office();
        // 10 x 0.05 x 0.8 = 0.40, + 0.10.
        assert_eq!(prices.price(&usage(10, false, true), None), eur(50));
        let odd = PriceList::from_policy(&policy(
            "EUR",
            Prices {
                mono_impression: Some("0.05".into()),
                duplex_factor: Some("0.9".into()),
                ..Default::default()
            },
        ))
        .unwrap();
        // 1 x 0.05 x 0.9 = 0.045 -> 0.05 (half up); 3 x 0.045 = 0.135 -> 0.14 (not 3 x 0.05).
        assert_eq!(odd.price(&usage(1, false, true), None), eur(5));
        assert_eq!(odd.price(&usage(3, false, true), None), eur(14));
        // 7 x 0.045 = 0.315 -> 0.32; 11 x 0.045 = 0.495 -> 0.50.
        assert_eq!(odd.price(&usage(7, false, true), None), eur(32));
        assert_eq!(odd.price(&usage(11, false, true), None), eur(50));
        // One-sided ignores the factor.
        assert_eq!(odd.price(&usage(3, false, false), None), eur(15));
    }

    #[test]
    fn color_defaults_to_the_mono_price() {
        let mono_only = PriceList::from_policy(&policy(
            "JPY",
            Prices {
                mono_impression: Some("10".into()),
                ..Default::default()
            },
        ))
        .unwrap();
        let price = mono_only.price(&usage(3, true, false), None);
        assert_eq!((price.minor, price.currency.as_str()), (30, "JPY"));
    }

    #[test]
    fn no_policy_prices_at_zero() {
        let free = PriceList::free();
        let price = free.price(&usage(1000, true, true), Some("iso_a3_297x420mm"));
        assert_eq!((price.minor, price.currency.as_str()), (0, NO_CURRENCY));
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let error = PriceList::from_policy(&policy(
            "EUR",
            Prices {
                mono_impression: Some("-1".into()),
                ..Default::default()
            },
        ))
        .unwrap_err();
        assert_eq!(error.0[0].field, "spec.prices.monoImpression");
        assert!(
            error.to_string().contains("spec.prices.monoImpression"),
            "{error}"
        );
        let error = PriceList::from_policy(&policy("eur", Prices::default())).unwrap_err();
        assert_eq!(error.0[0].field, "spec.currency");
    }

    #[test]
    fn huge_jobs_saturate_instead_of_wrapping() {
        let price = office().price(&usage(u64::MAX, true, false), None);
        assert_eq!(price.minor, i64::MAX);
    }

    #[test]
    fn money_displays_with_the_currency_exponent() {
        assert_eq!(eur(105).to_string(), "1.05 EUR");
        assert_eq!(eur(-5).to_string(), "-0.05 EUR");
        let yen = Money {
            minor: 500,
            currency: "JPY".into(),
        };
        assert_eq!(yen.to_string(), "500 JPY");
        let dinar = Money {
            minor: 1125,
            currency: "KWD".into(),
        };
        assert_eq!(dinar.to_string(), "1.125 KWD");
    }
}
