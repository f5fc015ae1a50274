//! Template helpers registered on both registries: `default`, `format_date`,
//! `format_money`, `upper`, `lower`, `capitalize`, `truncate` and `json`.
//!
//! Every helper returns its result as a JSON value (`call_inner`), so helpers compose as
//! subexpressions (`{{upper (default contact.first_name "there")}}`) and their output is
//! escaped by the registry's escape function like any other value.
//!
//! Missing values: handlebars-rust passes a missing path to a helper as a "missing"
//! parameter instead of failing, so each helper decides. `default` substitutes its
//! fallback (that is its purpose, in strict mode too). All others fail with a
//! missing-variable error in strict mode and render nothing otherwise, which keeps
//! `Mode::Lenient`'s "missing → empty" promise.
//! Bad input is a `RenderError` naming the helper; nothing here panics.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone as _, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, JsonRender as _, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value as Json;

/// Registers every Herald helper on `registry`.
pub(super) fn register(registry: &mut Handlebars<'static>) {
    registry.register_helper("default", Box::new(DefaultHelper));
    for helper in SIMPLE_HELPERS {
        registry.register_helper(helper.name, Box::new(*helper));
    }
}

/// `{{default value fallback}}`: `value` unless it is missing, null or "".
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        const USAGE: &str = r#"{{default contact.first_name "there"}}"#;
        check_arity(h, "default", USAGE, 2, 2)?;
        if let Some(value) = h.param(0)
            && !value.is_value_missing()
            && !is_blank(value.value())
        {
            return Ok(ScopedJson::Derived(value.value().clone()));
        }
        // The fallback itself is held to strict mode: `{{default a b}}` with `b` missing
        // is a typo worth reporting.
        let fallback = arg(h, r, 1)?.cloned().unwrap_or(Json::Null);
        Ok(ScopedJson::Derived(fallback))
    }
}

fn is_blank(value: &Json) -> bool {
    match value {
        Json::Null => true,
        Json::String(s) => s.is_empty(),
        _ => false,
    }
}

/// A helper whose arguments are all required values: a missing argument is a strict
/// error, or an empty result when not strict.
#[derive(Clone, Copy)]
struct SimpleHelper {
    name: &'static str,
    usage: &'static str,
    min_args: usize,
    max_args: usize,
    /// Accepted `key=value` hash arguments.
    hash_keys: &'static [&'static str],
    run: fn(&[&Json], &Helper<'_>) -> Result<Json, String>,
}

const SIMPLE_HELPERS: &[SimpleHelper] = &[
    SimpleHelper {
        name: "format_date",
        usage: r#"{{format_date event.timestamp "%B %-d, %Y" "Europe/Lisbon"}}"#,
        min_args: 1,
        max_args: 3,
        hash_keys: &[],
        run: run_format_date,
    },
    SimpleHelper {
        name: "format_money",
        usage: r#"{{format_money 1234 "USD"}} or {{format_money 12.5 "EUR" major=true}}"#,
        min_args: 2,
        max_args: 2,
        hash_keys: &["major"],
        run: run_format_money,
    },
    SimpleHelper {
        name: "upper",
        usage: "{{upper contact.city}}",
        min_args: 1,
        max_args: 1,
        hash_keys: &[],
        run: |args, _| Ok(Json::String(text_arg(args[0])?.to_uppercase())),
    },
    SimpleHelper {
        name: "lower",
        usage: "{{lower contact.email}}",
        min_args: 1,
        max_args: 1,
        hash_keys: &[],
        run: |args, _| Ok(Json::String(text_arg(args[0])?.to_lowercase())),
    },
    SimpleHelper {
        name: "capitalize",
        usage: "{{capitalize contact.first_name}}",
        min_args: 1,
        max_args: 1,
        hash_keys: &[],
        run: |args, _| Ok(Json::String(capitalize(&text_arg(args[0])?))),
    },
    SimpleHelper {
        name: "truncate",
        usage: "{{truncate event.properties.title 40}}",
        min_args: 2,
        max_args: 2,
        hash_keys: &[],
        run: run_truncate,
    },
    SimpleHelper {
        name: "json",
        usage: "{{json event.properties}}",
        min_args: 1,
        max_args: 1,
        hash_keys: &[],
        run: |args, _| {
            serde_json::to_string(args[0])
                .map(Json::String)
                .map_err(|e| e.to_string())
        },
    },
];

impl HelperDef for SimpleHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        check_arity(h, self.name, self.usage, self.min_args, self.max_args)?;
        if let Some(key) = h.hash().keys().find(|k| !self.hash_keys.contains(k)) {
            return Err(helper_error(
                self.name,
                format!("unknown option `{key}=`; usage: {}", self.usage),
            ));
        }
        let mut args = Vec::with_capacity(h.params().len());
        for idx in 0..h.params().len() {
            match arg(h, r, idx)? {
                Some(value) => args.push(value),
                // Only reachable when not strict: render nothing, like a missing `{{x}}`.
                None => return Ok(ScopedJson::Derived(Json::Null)),
            }
        }
        (self.run)(&args, h)
            .map(ScopedJson::Derived)
            .map_err(|message| helper_error(self.name, message))
    }
}

fn check_arity(
    h: &Helper<'_>,
    name: &str,
    usage: &str,
    min: usize,
    max: usize,
) -> Result<(), RenderError> {
    let n = h.params().len();
    if (min..=max).contains(&n) {
        return Ok(());
    }
    let expected = if min == max {
        format!("{min}")
    } else {
        format!("{min} to {max}")
    };
    Err(helper_error(
        name,
        format!("expected {expected} arguments, got {n}; usage: {usage}"),
    ))
}

/// Argument `idx`: `Ok(None)` when it is missing and the registry is not strict,
/// a missing-variable error when it is missing in strict mode.
fn arg<'a>(
    h: &'a Helper<'_>,
    r: &Handlebars<'_>,
    idx: usize,
) -> Result<Option<&'a Json>, RenderError> {
    let Some(param) = h.param(idx) else {
        return Err(helper_error(
            h.name(),
            format!("argument {} is required", idx + 1),
        ));
    };
    if !param.is_value_missing() {
        return Ok(Some(param.value()));
    }
    if r.strict_mode() {
        return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
    }
    Ok(None)
}

fn helper_error(name: &str, message: impl std::fmt::Display) -> RenderError {
    RenderErrorReason::Other(format!("{name}: {message}")).into()
}

/// Strings pass through, numbers and booleans render as usual, null is "".
fn text_arg(value: &Json) -> Result<String, String> {
    match value {
        Json::Array(_) | Json::Object(_) => {
            Err("expected text, got a list or an object".to_owned())
        }
        other => Ok(other.render()),
    }
}

/// Upper-cases the first character only, so "mcDonald" becomes "McDonald".
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `{{truncate text n}}`: the first `n` characters (not bytes) followed by "…" when
/// anything was cut.
fn run_truncate(args: &[&Json], _: &Helper<'_>) -> Result<Json, String> {
    let text = text_arg(args[0])?;
    let Some(max) = args[1].as_u64() else {
        return Err(format!(
            "length must be a whole number ≥ 0, got {}",
            args[1]
        ));
    };
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    match text.char_indices().nth(max) {
        None => Ok(Json::String(text)),
        Some((cut, _)) => Ok(Json::String(format!("{}…", text[..cut].trim_end()))),
    }
}

const DEFAULT_DATE_FORMAT: &str = "%B %-d, %Y";

/// A parsed `format_date` input.
enum DateInput {
    /// A point in time with a known offset (RFC 3339 or epoch seconds).
    Instant(DateTime<FixedOffset>),
    /// A calendar date such as a birthday. Converting it to another time zone would
    /// shift it by a day for half the planet, so the zone argument does not apply.
    Date(NaiveDate),
}

fn run_format_date(args: &[&Json], _: &Helper<'_>) -> Result<Json, String> {
    let Some(input) = parse_date_input(args[0])? else {
        return Ok(Json::String(String::new()));
    };
    let format = match args.get(1) {
        None => DEFAULT_DATE_FORMAT,
        Some(Json::String(f)) => f.as_str(),
        Some(other) => return Err(format!("format must be a string, got {other}")),
    };
    let zone = match args.get(2) {
        None => None,
        Some(Json::String(name)) => Some(
            name.parse::<chrono_tz::Tz>()
                .map_err(|_| format!("unknown time zone `{name}`"))?,
        ),
        Some(other) => return Err(format!("time zone must be a string, got {other}")),
    };

    // chrono reports a bad format string (`%Q`, or `%z` on a plain date) as a
    // `fmt::Error`; `to_string()` would panic on it, `write!` hands it back.
    let mut out = String::new();
    let written = match (input, zone) {
        (DateInput::Instant(dt), Some(tz)) => {
            write!(out, "{}", dt.with_timezone(&tz).format(format))
        }
        (DateInput::Instant(dt), None) => write!(out, "{}", dt.format(format)),
        (DateInput::Date(date), _) => {
            write!(out, "{}", NaiveDateTime::from(date).format(format))
        }
    };
    written.map_err(|_| format!("cannot format the date with `{format}`"))?;
    Ok(Json::String(out))
}

/// `Ok(None)` for null, so an absent optional date renders as nothing.
fn parse_date_input(value: &Json) -> Result<Option<DateInput>, String> {
    match value {
        Json::Null => Ok(None),
        Json::String(s) => {
            let s = s.trim();
            if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
                Ok(Some(DateInput::Instant(dt)))
            } else if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                Ok(Some(DateInput::Date(date)))
            } else {
                Err(format!(
                    "`{s}` is not an RFC 3339 timestamp, a YYYY-MM-DD date or epoch seconds"
                ))
            }
        }
        Json::Number(n) => {
            let dt = if let Some(secs) = n.as_i64() {
                Utc.timestamp_opt(secs, 0).single()
            } else {
                n.as_f64().and_then(|secs| {
                    Utc.timestamp_millis_opt(f64_to_i64(secs * 1000.0)?)
                        .single()
                })
            };
            dt.map(|dt| Some(DateInput::Instant(dt.fixed_offset())))
                .ok_or_else(|| format!("{n} is out of range for epoch seconds"))
        }
        other => Err(format!(
            "expected an RFC 3339 timestamp, a YYYY-MM-DD date or epoch seconds, got {other}"
        )),
    }
}

/// Rounds a float to an integer without `as` casts (which saturate silently):
/// `None` when it is not finite or does not fit.
fn f64_to_i64(value: f64) -> Option<i64> {
    if !value.is_finite() {
        return None;
    }
    format!("{:.0}", value.round()).parse().ok()
}

/// Symbol and number of minor-unit decimals of a currency (ISO 4217 exponent).
fn currency_style(code: &str) -> (Option<&'static str>, u32) {
    let symbol = match code {
        "USD" => Some("$"),
        "EUR" => Some("€"),
        "GBP" => Some("£"),
        "JPY" => Some("¥"),
        _ => None,
    };
    let decimals = match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    (symbol, decimals)
}

/// Largest amount (in minor units) we format; far beyond any real order, and small
/// enough that the arithmetic below cannot overflow.
const MAX_MINOR_UNITS: i128 = 1_000_000_000_000_000_000;

fn run_format_money(args: &[&Json], h: &Helper<'_>) -> Result<Json, String> {
    let code = match args[1] {
        Json::String(code) => code.trim().to_ascii_uppercase(),
        other => {
            return Err(format!(
                "currency must be a string like \"USD\", got {other}"
            ));
        }
    };
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "currency must be a 3-letter ISO 4217 code like \"USD\", got \"{code}\""
        ));
    }
    let major = match h.hash_get("major").map(|v| v.value()) {
        None => false,
        Some(Json::Bool(b)) => *b,
        Some(other) => return Err(format!("major= must be true or false, got {other}")),
    };
    let (symbol, decimals) = currency_style(&code);
    let minor = if major {
        major_to_minor(args[0], decimals)?
    } else {
        minor_units(args[0])?
    };
    if minor.abs() >= MAX_MINOR_UNITS {
        return Err(format!("amount {} is too large", args[0]));
    }
    Ok(Json::String(format_minor(minor, decimals, symbol, &code)))
}

/// An amount already in minor units (cents): an integer, or a string or float holding one.
fn minor_units(amount: &Json) -> Result<i128, String> {
    let not_whole = || {
        format!(
            "amount {amount} is not a whole number of minor units (cents); \
             pass major=true for an amount like 12.50"
        )
    };
    match amount {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 {
                    f64_to_i64(f).map(i128::from).ok_or_else(not_whole)
                } else {
                    Err(not_whole())
                }
            }
        }
        Json::String(s) => s.trim().parse::<i128>().map_err(|_| not_whole()),
        other => Err(format!("amount must be a number, got {other}")),
    }
}

/// A major-unit amount (12.5 euros) converted to minor units, rounded half away from zero.
fn major_to_minor(amount: &Json, decimals: u32) -> Result<i128, String> {
    let value = match amount {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|v| v.is_finite())
    .ok_or_else(|| format!("amount must be a number, got {amount}"))?;
    let scaled = value * 10f64.powi(i32::try_from(decimals).unwrap_or(2));
    f64_to_i64(scaled)
        .map(i128::from)
        .ok_or_else(|| format!("amount {amount} is too large"))
}

fn format_minor(minor: i128, decimals: u32, symbol: Option<&str>, code: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let unit = 10u128.pow(decimals);
    let whole = group_thousands(abs / unit);
    let amount = if decimals == 0 {
        whole
    } else {
        let width = usize::try_from(decimals).unwrap_or(2);
        format!("{whole}.{:0width$}", abs % unit)
    };
    match symbol {
        Some(symbol) => format!("{sign}{symbol}{amount}"),
        None => format!("{sign}{code} {amount}"),
    }
}

/// 1234567 → "1,234,567".
fn group_thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(strict: bool) -> Handlebars<'static> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(strict);
        hb.register_escape_fn(handlebars::no_escape);
        register(&mut hb);
        hb
    }

    fn render(template: &str, data: &Json) -> Result<String, RenderError> {
        registry(true).render_template(template, data)
    }

    fn ok(template: &str, data: &Json) -> String {
        render(template, data).unwrap()
    }

    fn err(template: &str, data: &Json) -> String {
        render(template, data).unwrap_err().reason().to_string()
    }

    #[test]
    fn default_handles_missing_null_and_empty_in_strict_mode() {
        let data = json!({"contact": {"first_name": "Ana", "empty": "", "none": null}});
        let t = r#"{{default contact.first_name "there"}}"#;
        assert_eq!(ok(t, &data), "Ana");
        for key in ["missing", "empty", "none"] {
            let t = format!(r#"{{{{default contact.{key} "there"}}}}"#);
            assert_eq!(ok(&t, &data), "there", "{key}");
        }
        // Missing parent object too.
        assert_eq!(ok(r#"{{default nobody.first_name "x"}}"#, &data), "x");
        // Zero and false are values, not blanks.
        assert_eq!(ok(r#"{{default n "x"}}"#, &json!({"n": 0})), "0");
        // Composes as a subexpression.
        assert_eq!(
            ok(r#"{{upper (default contact.nick "friend")}}"#, &data),
            "FRIEND"
        );
    }

    #[test]
    fn default_fallback_is_strict() {
        let e = err("{{default a b}}", &json!({}));
        assert!(e.contains("strict"), "{e}");
        assert_eq!(
            registry(false)
                .render_template("[{{default a b}}]", &json!({}))
                .unwrap(),
            "[]"
        );
        assert!(err("{{default a}}", &json!({})).contains("expected 2 arguments"));
    }

    #[test]
    fn format_date_inputs() {
        let data = json!({
            "ts": "2026-03-01T23:30:00Z",
            "day": "1990-07-14",
            "epoch": 1_700_000_000,
            "epoch_f": 1_700_000_000.5,
            "bad": "yesterday",
            "huge": 1e300,
            "none": null,
        });
        assert_eq!(ok("{{format_date ts}}", &data), "March 1, 2026");
        assert_eq!(
            ok(
                r#"{{format_date ts "%Y-%m-%d %H:%M" "Europe/Lisbon"}}"#,
                &data
            ),
            "2026-03-01 23:30"
        );
        assert_eq!(
            ok(
                r#"{{format_date ts "%Y-%m-%d %H:%M %Z" "Asia/Tokyo"}}"#,
                &data
            ),
            "2026-03-02 08:30 JST"
        );
        assert_eq!(ok(r#"{{format_date day "%-d %B"}}"#, &data), "14 July");
        // A calendar date is not shifted by a zone.
        assert_eq!(
            ok(
                r#"{{format_date day "%Y-%m-%d" "Pacific/Honolulu"}}"#,
                &data
            ),
            "1990-07-14"
        );
        assert_eq!(
            ok(r#"{{format_date epoch "%Y-%m-%dT%H:%M:%S"}}"#, &data),
            "2023-11-14T22:13:20"
        );
        assert_eq!(ok(r#"{{format_date epoch_f "%S%.3f"}}"#, &data), "20.500");
        assert_eq!(ok("[{{format_date none}}]", &data), "[]");
        assert!(err("{{format_date bad}}", &data).contains("not an RFC 3339"));
        assert!(err(r#"{{format_date ts "%Y" "Mars/Base"}}"#, &data).contains("unknown time zone"));
        assert!(err(r#"{{format_date ts "%Q"}}"#, &data).contains("cannot format"));
        assert!(err(r#"{{format_date day "%z"}}"#, &data).contains("cannot format"));
        assert!(err("{{format_date huge}}", &data).contains("out of range"));
        assert!(err("{{format_date missing}}", &data).contains("strict"));
    }

    #[test]
    fn format_money_currencies() {
        let d = json!({"cents": 1234, "neg": -100, "big": 123_456_789, "str": "999"});
        assert_eq!(ok(r#"{{format_money cents "USD"}}"#, &d), "$12.34");
        assert_eq!(ok(r#"{{format_money cents "eur"}}"#, &d), "€12.34");
        assert_eq!(ok(r#"{{format_money cents "GBP"}}"#, &d), "£12.34");
        assert_eq!(ok(r#"{{format_money cents "JPY"}}"#, &d), "¥1,234");
        assert_eq!(ok(r#"{{format_money cents "CHF"}}"#, &d), "CHF 12.34");
        assert_eq!(ok(r#"{{format_money cents "KWD"}}"#, &d), "KWD 1.234");
        assert_eq!(ok(r#"{{format_money neg "USD"}}"#, &d), "-$1.00");
        assert_eq!(ok(r#"{{format_money neg "CHF"}}"#, &d), "-CHF 1.00");
        assert_eq!(ok(r#"{{format_money big "USD"}}"#, &d), "$1,234,567.89");
        assert_eq!(ok(r#"{{format_money str "USD"}}"#, &d), "$9.99");
        assert_eq!(ok(r#"{{format_money 5 "USD"}}"#, &d), "$0.05");
        assert_eq!(ok(r#"{{format_money 1200.0 "USD"}}"#, &d), "$12.00");
    }

    #[test]
    fn format_money_major_units() {
        let d = json!({});
        assert_eq!(
            ok(r#"{{format_money 12.5 "EUR" major=true}}"#, &d),
            "€12.50"
        );
        assert_eq!(
            ok(r#"{{format_money -0.5 "USD" major=true}}"#, &d),
            "-$0.50"
        );
        assert_eq!(
            ok(r#"{{format_money 1500 "JPY" major=true}}"#, &d),
            "¥1,500"
        );
        assert_eq!(
            ok(r#"{{format_money 19.999 "USD" major=true}}"#, &d),
            "$20.00"
        );
        assert_eq!(ok(r#"{{format_money 12 "USD" major=false}}"#, &d), "$0.12");
    }

    #[test]
    fn format_money_rejects_bad_input() {
        let d = json!({"obj": {}, "huge": 1e300});
        assert!(err(r#"{{format_money 12.5 "USD"}}"#, &d).contains("major=true"));
        assert!(err(r#"{{format_money obj "USD"}}"#, &d).contains("must be a number"));
        assert!(err(r#"{{format_money 1 "dollars"}}"#, &d).contains("3-letter"));
        assert!(err(r#"{{format_money 1 5}}"#, &d).contains("currency"));
        assert!(err(r#"{{format_money 1 "USD" major="yes"}}"#, &d).contains("major="));
        assert!(err(r#"{{format_money 1 "USD" minor=true}}"#, &d).contains("unknown option"));
        assert!(err(r#"{{format_money huge "USD" major=true}}"#, &d).contains("too large"));
        // Beyond i64 a JSON integer arrives as a float and no longer fits.
        assert!(err(r#"{{format_money 99999999999999999999 "USD"}}"#, &d).contains("whole number"));
        assert!(err(r#"{{format_money huge "USD"}}"#, &d).contains("whole number"));
        assert!(err(r#"{{format_money 1}}"#, &d).contains("expected 2 arguments"));
    }

    #[test]
    fn text_helpers() {
        let d = json!({"s": "ana maria", "u": "ÉCOLE", "n": 42, "list": [1]});
        assert_eq!(ok("{{upper s}}", &d), "ANA MARIA");
        assert_eq!(ok("{{lower u}}", &d), "école");
        assert_eq!(ok("{{capitalize s}}", &d), "Ana maria");
        assert_eq!(ok(r#"{{capitalize ""}}"#, &d), "");
        assert_eq!(ok("{{upper n}}", &d), "42");
        assert!(err("{{upper list}}", &d).contains("expected text"));
        assert!(err("{{upper s n}}", &d).contains("expected 1 arguments"));
        assert!(err("{{lower nope}}", &d).contains("strict"));
    }

    #[test]
    fn truncate_is_char_safe() {
        let d = json!({"s": "Olá, mundo — café", "short": "hi"});
        assert_eq!(ok("{{truncate s 3}}", &d), "Olá…");
        assert_eq!(ok("{{truncate s 5}}", &d), "Olá,…");
        assert_eq!(ok("{{truncate s 100}}", &d), "Olá, mundo — café");
        assert_eq!(ok("{{truncate short 2}}", &d), "hi");
        assert_eq!(ok("{{truncate s 0}}", &d), "…");
        assert!(err("{{truncate s -1}}", &d).contains("whole number"));
        assert!(err(r#"{{truncate s "x"}}"#, &d).contains("whole number"));
    }

    #[test]
    fn json_helper() {
        let d = json!({"p": {"a": [1, "x"]}});
        assert_eq!(ok("{{json p}}", &d), r#"{"a":[1,"x"]}"#);
        assert_eq!(ok(r#"{{json "a\"b"}}"#, &d), r#""a\"b""#);
    }

    #[test]
    fn not_strict_missing_renders_empty() {
        let hb = registry(false);
        for t in [
            "{{upper nope}}",
            "{{format_date nope}}",
            r#"{{format_money nope "USD"}}"#,
            "{{truncate nope 3}}",
            "{{json nope}}",
        ] {
            assert_eq!(hb.render_template(t, &json!({})).unwrap(), "", "{t}");
        }
    }

    #[test]
    fn output_is_escaped_by_the_registry() {
        let mut hb = Handlebars::new();
        register(&mut hb);
        let out = hb
            .render_template("{{upper s}}", &json!({"s": "tom & jerry"}))
            .unwrap();
        assert_eq!(out, "TOM &amp; JERRY");
    }
}
