//! Model prices and the cost of a model call, in integer micro-dollars so that sums over millions
//! of calls never drift the way floating-point sums do.
//!
//! A model is looked up by its exact name, then by the longest known name that it extends with a
//! snapshot suffix (`-2024-08-06`, `-20250514`, `@20250514`, `-latest`), so dated snapshots of a
//! known model are priced like it. A name that merely starts like a known one (`o3-mini` after
//! `o3`, `claude-opus-4-5` after `claude-opus-4`) is a different model with a different price and
//! is *not* matched: an unknown model costs 0 and is flagged `priced: false`, never given an
//! invented number. Local models (provider `local` or `ollama`, or a model named `ollama/…`)
//! cost nothing and are priced.

use std::collections::BTreeMap;

/// Micro-dollars in one dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// The price of one model in micro-dollars per million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelPrice {
    /// Uncached input tokens.
    pub input: u64,
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: u64,
}

impl ModelPrice {
    /// A price given in dollars per million tokens, as providers publish them.
    pub fn usd(input: f64, output: f64, cache_read: f64, cache_write: f64) -> ModelPrice {
        ModelPrice {
            input: usd_to_micros(input),
            output: usd_to_micros(output),
            cache_read: usd_to_micros(cache_read),
            cache_write: usd_to_micros(cache_write),
        }
    }
}

/// Dollars (finite, not negative) to micro-dollars, rounded to the nearest micro-dollar.
/// Anything else is 0; [`check_usd`] is how configuration refuses it.
pub fn usd_to_micros(usd: f64) -> u64 {
    if usd.is_finite() && usd >= 0.0 {
        (usd * MICROS_PER_USD as f64).round() as u64
    } else {
        0
    }
}

/// Refuses a dollar amount that is not a finite, non-negative number.
pub fn check_usd(field: &str, usd: f64) -> Result<u64, crate::ValidationError> {
    if (0.0..1e12).contains(&usd) {
        Ok(usd_to_micros(usd))
    } else {
        Err(crate::ValidationError::new(
            field,
            format!("must be a number of dollars from 0 to 1e12 (got {usd})"),
        ))
    }
}

/// Micro-dollars as dollars, for display and metrics.
pub fn micros_to_usd(micros: u64) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

/// Micro-dollars for messages: `$12.34` (cents, rounded half up) from a dollar up or in whole
/// cents, else every digit (`$0.0045`), so that a small budget is not shown as `$0.00`.
pub fn format_usd(micros: u64) -> String {
    if micros < 1_000_000 && !micros.is_multiple_of(10_000) {
        // Under a dollar, cents would hide what a small budget is about: show every digit.
        let digits = format!("{micros:06}");
        return format!("$0.{}", digits.trim_end_matches('0'));
    }
    let cents = (micros + 5_000) / 10_000;
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// The tokens of one model call, as the provider reported them (`input` excludes cached input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

/// What a call cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub micros: u64,
    /// False when the model has no price: `micros` is then 0, not a guess.
    pub priced: bool,
}

/// Prices by model name: the defaults below, overridden or extended by configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

impl Default for PriceTable {
    fn default() -> Self {
        let p = ModelPrice::usd;
        let defaults = [
            // Anthropic: cache reads are a tenth of input, 5-minute cache writes 1.25 times it.
            ("claude-opus-4", p(15.0, 75.0, 1.50, 18.75)),
            ("claude-opus-4-1", p(15.0, 75.0, 1.50, 18.75)),
            ("claude-sonnet-4", p(3.0, 15.0, 0.30, 3.75)),
            ("claude-sonnet-4-5", p(3.0, 15.0, 0.30, 3.75)),
            ("claude-haiku-4-5", p(1.0, 5.0, 0.10, 1.25)),
            ("claude-3-5-haiku", p(0.80, 4.0, 0.08, 1.0)),
            // OpenAI: caching is automatic and writing to the cache costs what input costs.
            ("gpt-4o", p(2.50, 10.0, 1.25, 2.50)),
            ("gpt-4o-mini", p(0.15, 0.60, 0.075, 0.15)),
            ("gpt-4.1", p(2.0, 8.0, 0.50, 2.0)),
            ("gpt-4.1-mini", p(0.40, 1.60, 0.10, 0.40)),
            ("o3", p(2.0, 8.0, 0.50, 2.0)),
            ("o4-mini", p(1.10, 4.40, 0.275, 1.10)),
        ];
        PriceTable {
            models: defaults
                .into_iter()
                .map(|(name, price)| (name.to_string(), price))
                .collect(),
        }
    }
}

/// Providers whose models run on the operator's own hardware.
const LOCAL_PROVIDERS: &[&str] = &["local", "ollama"];

/// Whether `rest` (what follows a known model name) names a snapshot of that model: a separator
/// then a date (at least four digits) or `latest`.
fn is_snapshot_suffix(rest: &str) -> bool {
    let Some(tail) = rest.strip_prefix(['-', '@']) else {
        return false;
    };
    tail == "latest" || tail.bytes().take_while(u8::is_ascii_digit).count() >= 4
}

impl PriceTable {
    /// A table with no prices at all (every remote model unpriced).
    pub fn empty() -> PriceTable {
        PriceTable {
            models: BTreeMap::new(),
        }
    }

    /// Sets (adds or replaces) a model's price.
    pub fn set(&mut self, model: &str, price: ModelPrice) {
        self.models.insert(model.to_string(), price);
    }

    /// The price of `model`: exact name, else the longest known name it is a snapshot of; a
    /// `vendor/model` name is also looked up without its vendor.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.lookup(model).or_else(|| {
            model
                .rsplit_once('/')
                .and_then(|(_, bare)| self.lookup(bare))
        })
    }

    fn lookup(&self, model: &str) -> Option<ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(*p);
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .is_some_and(is_snapshot_suffix)
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }

    /// Whether calls to `model` through `provider` cost nothing because they run locally.
    pub fn is_local(provider: &str, model: &str) -> bool {
        LOCAL_PROVIDERS.contains(&provider.to_ascii_lowercase().as_str())
            || model.starts_with("ollama/")
    }

    /// The cost of one call. Rounded once, to the nearest micro-dollar, per call.
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> Cost {
        if Self::is_local(provider, model) {
            return Cost {
                micros: 0,
                priced: true,
            };
        }
        let Some(p) = self.price(model) else {
            return Cost {
                micros: 0,
                priced: false,
            };
        };
        let parts = [
            (usage.input_tokens, p.input),
            (usage.output_tokens, p.output),
            (usage.cache_read_tokens, p.cache_read),
            (usage.cache_write_tokens, p.cache_write),
        ];
        // Tokens times micro-dollars per million tokens: u128 cannot overflow here.
        let scaled: u128 = parts
            .iter()
            .map(|(tokens, per_mtok)| u128::from(*tokens) * u128::from(*per_mtok))
            .sum();
        let micros = (scaled + 500_000) / 1_000_000;
        Cost {
            micros: u64::try_from(micros).unwrap_or(u64::MAX),
            priced: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(i: u64, o: u64, r: u64, w: u64) -> Usage {
        Usage {
            input_tokens: i,
            output_tokens: o,
            cache_read_tokens: r,
            cache_write_tokens: w,
        }
    }

    #[test]
    fn defaults_price_each_kind_of_token() {
        let t = PriceTable::default();
        let million = 1_000_000;
        // (provider, model, usage, micro-dollars)
        let cases = [
            (
                "anthropic",
                "claude-opus-4-1",
                usage(million, 0, 0, 0),
                15_000_000,
            ),
            (
                "anthropic",
                "claude-opus-4",
                usage(0, million, 0, 0),
                75_000_000,
            ),
            (
                "anthropic",
                "claude-opus-4",
                usage(0, 0, million, 0),
                1_500_000,
            ),
            (
                "anthropic",
                "claude-opus-4",
                usage(0, 0, 0, million),
                18_750_000,
            ),
            (
                "anthropic",
                "claude-sonnet-4-5",
                usage(million, million, million, million),
                22_050_000,
            ),
            (
                "anthropic",
                "claude-haiku-4-5",
                usage(million, million, million, million),
                7_350_000,
            ),
            (
                "anthropic",
                "claude-3-5-haiku",
                usage(million, million, million, million),
                5_880_000,
            ),
            (
                "openai",
                "gpt-4o",
                usage(million, million, million, 0),
                13_750_000,
            ),
            (
                "openai",
                "gpt-4o-mini",
                usage(million, million, million, 0),
                825_000,
            ),
            (
                "openai",
                "gpt-4.1",
                usage(million, million, million, 0),
                10_500_000,
            ),
            (
                "openai",
                "gpt-4.1-mini",
                usage(million, million, million, 0),
                2_100_000,
            ),
            (
                "openai",
                "o3",
                usage(million, million, million, 0),
                10_500_000,
            ),
            (
                "openai",
                "o4-mini",
                usage(million, million, million, 0),
                5_775_000,
            ),
            // A small call: 1,234 input and 567 output tokens of Sonnet.
            (
                "anthropic",
                "claude-sonnet-4",
                usage(1234, 567, 0, 0),
                12_207,
            ),
            ("anthropic", "claude-sonnet-4", usage(0, 0, 0, 0), 0),
        ];
        for (provider, model, u, want) in cases {
            let c = t.cost(provider, model, &u);
            assert_eq!(
                c,
                Cost {
                    micros: want,
                    priced: true
                },
                "{model} {u:?}"
            );
        }
    }

    #[test]
    fn snapshots_match_by_longest_prefix_and_look_alikes_do_not() {
        let t = PriceTable::default();
        let price = |m: &str| t.price(m);
        assert_eq!(price("claude-sonnet-4-20250514"), price("claude-sonnet-4"));
        assert_eq!(
            price("claude-sonnet-4-5-20250929"),
            price("claude-sonnet-4-5")
        );
        assert_eq!(price("claude-3-5-haiku-latest"), price("claude-3-5-haiku"));
        assert_eq!(price("claude-opus-4-1@20250805"), price("claude-opus-4-1"));
        assert_eq!(price("gpt-4o-2024-08-06"), price("gpt-4o"));
        // The longest prefix wins: gpt-4o-mini's snapshot is not priced as gpt-4o.
        assert_eq!(price("gpt-4o-mini-2024-07-18"), price("gpt-4o-mini"));
        assert_ne!(price("gpt-4o-mini-2024-07-18"), price("gpt-4o"));
        assert_eq!(price("o3-2025-04-16"), price("o3"));
        assert_eq!(
            price("anthropic/claude-haiku-4-5"),
            price("claude-haiku-4-5")
        );
        // Different models that only start like known ones have no price.
        for other in [
            "o3-mini",
            "o3-pro",
            "claude-opus-4-5",
            "gpt-4o-audio",
            "gpt-4",
            "mystery",
        ] {
            assert_eq!(price(other), None, "{other}");
        }
    }

    #[test]
    fn unknown_models_are_unpriced_and_local_models_free() {
        let t = PriceTable::default();
        let u = usage(1000, 1000, 0, 0);
        assert_eq!(
            t.cost("acme", "mystery-1", &u),
            Cost {
                micros: 0,
                priced: false
            }
        );
        let free = Cost {
            micros: 0,
            priced: true,
        };
        assert_eq!(t.cost("ollama", "llama3.1:8b", &u), free);
        assert_eq!(t.cost("local", "qwen", &u), free);
        assert_eq!(t.cost("openai-compatible", "ollama/llama3", &u), free);
    }

    #[test]
    fn configuration_overrides_and_extends() {
        let mut t = PriceTable::default();
        t.set("gpt-4o", ModelPrice::usd(1.0, 2.0, 0.5, 1.0));
        t.set("o3-mini", ModelPrice::usd(1.10, 4.40, 0.55, 1.10));
        let m = 1_000_000;
        assert_eq!(
            t.cost("openai", "gpt-4o-2024-11-20", &usage(m, m, 0, 0))
                .micros,
            3_000_000
        );
        assert_eq!(
            t.cost("openai", "o3-mini", &usage(m, 0, 0, 0)).micros,
            1_100_000
        );
        assert!(PriceTable::empty().price("gpt-4o").is_none());
    }

    #[test]
    fn rounding_is_per_call_and_to_the_nearest_micro_dollar() {
        let t = PriceTable::default();
        // gpt-4o-mini input: 0.15 micro-dollars a token.
        assert_eq!(
            t.cost("openai", "gpt-4o-mini", &usage(3, 0, 0, 0)).micros,
            0
        );
        assert_eq!(
            t.cost("openai", "gpt-4o-mini", &usage(4, 0, 0, 0)).micros,
            1
        );
        assert_eq!(
            t.cost("openai", "gpt-4o-mini", &usage(10, 0, 0, 0)).micros,
            2
        );
        // Huge counts do not overflow.
        let big = t.cost(
            "anthropic",
            "claude-opus-4",
            &usage(u64::MAX, u64::MAX, 0, 0),
        );
        assert!(big.priced && big.micros > 0);
    }

    #[test]
    fn dollars_convert_and_format() {
        assert_eq!(usd_to_micros(0.075), 75_000);
        assert_eq!(usd_to_micros(-1.0), 0);
        assert_eq!(usd_to_micros(f64::NAN), 0);
        assert!(check_usd("limit_usd", -0.5).is_err());
        assert!(check_usd("limit_usd", f64::INFINITY).is_err());
        assert_eq!(check_usd("limit_usd", 10.0), Ok(10_000_000));
        assert_eq!(format_usd(12_340_000), "$12.34");
        assert_eq!(format_usd(10_000_000), "$10.00");
        assert_eq!(format_usd(4_999), "$0.004999");
        assert_eq!(format_usd(4_500), "$0.0045");
        assert_eq!(format_usd(1_000), "$0.001");
        assert_eq!(format_usd(0), "$0.00");
        assert_eq!(format_usd(250_000), "$0.25");
        assert_eq!(format_usd(1_234_567), "$1.23");
        assert_eq!(micros_to_usd(1_500_000), 1.5);
    }
}
