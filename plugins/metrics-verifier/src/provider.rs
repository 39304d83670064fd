//! Taking one value: an instant query to Prometheus, or one series of a scraped page.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use shiphat_plugin_sdk::http::{self, ErrorCode, HttpError};

use crate::analysis::Reading;
use crate::config::{JsonPath, Metric, Source};

/// Why a measurement has no value.
pub enum Problem {
    /// The measurement is an Error: the query failed, the result was empty, NaN, or not one
    /// number. The analysis goes on until `consecutive_error_limit`.
    Error(String),
    /// The step's `allow.http` does not grant the address: no later measurement can work.
    Denied(String),
}

/// Takes one measurement of `metric`: of now, or of the past time `at` (a replay; only
/// Prometheus keeps the past, and the config refuses a replay of any other source).
pub fn measure(metric: &Metric, at: Option<SystemTime>) -> Result<Reading, Problem> {
    let value = match &metric.source {
        Source::Prometheus { address, query } => {
            let mut url = format!(
                "{}/api/v1/query?query={}",
                address.trim_end_matches('/'),
                encode(query)
            );
            if let Some(at) = at {
                // The instant query as Prometheus evaluates it at `at`: the value a query then
                // would have had, and the one `query_range` gives at that step.
                let at = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                url.push_str(&format!("&time={}.{:03}", at.as_secs(), at.subsec_millis()));
            }
            let response = send(metric, "GET", &url, None)?;
            prometheus_value(response.status, &response.body).map_err(Problem::Error)?
        }
        Source::Web {
            url,
            method,
            body,
            json_path,
        } => {
            let response = send(metric, method, url, body.as_deref())?;
            if !response.is_success() {
                return Err(Problem::Error(format!(
                    "`{url}` answered HTTP {}",
                    response.status
                )));
            }
            match web_value(&response.body, json_path).map_err(Problem::Error)? {
                Reading::Number(n) => n,
                other => return Ok(other),
            }
        }
        Source::Scrape {
            url,
            series,
            labels,
        } => {
            let response = send(metric, "GET", url, None)?;
            if !response.is_success() {
                return Err(Problem::Error(format!(
                    "`{url}` answered HTTP {}",
                    response.status
                )));
            }
            scrape_value(&response.text(), series, labels).map_err(Problem::Error)?
        }
    };
    // Stricter than Argo, which hands NaN and ±Inf to the conditions: both mostly mean a
    // ratio over no traffic (0/0, x/0), which says nothing about the release either way.
    if value.is_nan() {
        return Err(Problem::Error(
            "the result is NaN (a ratio over no traffic gives it); it is neither good nor bad"
                .into(),
        ));
    }
    if value.is_infinite() {
        let sign = if value > 0.0 { '+' } else { '-' };
        return Err(Problem::Error(format!(
            "the result is `{sign}Inf` (a division by zero gives it); it is neither good nor bad"
        )));
    }
    Ok(Reading::Number(value))
}

/// One request for `metric`, with its token and headers, within its timeout.
fn send(
    metric: &Metric,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<http::Response, Problem> {
    let bearer = metric.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", "application/json, text/plain")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    headers.extend(metric.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    http::request(
        method,
        url,
        &headers,
        body.map(str::as_bytes),
        Some(metric.timeout),
    )
    .map_err(|e| match e {
        HttpError::Wasi(ErrorCode::HttpRequestDenied) => Problem::Denied(format!(
            "the host of `{url}` is not granted; add it to the step's `allow.http`"
        )),
        e => Problem::Error(format!("{method} `{url}` failed: {e}")),
    })
}

/// What a `web` answer says: the value at `path` in a JSON body, or the whole body when it
/// is not JSON, as Argo reads it. A number is a [`Reading::Number`], so that it is held to
/// the same rules as Prometheus's; anything else goes to the conditions as it is. An empty
/// body and a `null` are Errors, as an empty Prometheus result is.
fn web_value(body: &[u8], path: &JsonPath) -> Result<Reading, String> {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        if text.trim().is_empty() {
            return Err("the answer is empty".into());
        }
        return Ok(Reading::Json(Value::String(text.into_owned())));
    };
    match path.find(&json) {
        None | Some(Value::Null) => Err(format!("the answer has no value at `{}`", path.text)),
        Some(Value::Number(n)) => Ok(Reading::Number(n.as_f64().unwrap_or(f64::NAN))),
        Some(value) => Ok(Reading::Json(value.clone())),
    }
}

/// The number in an answer of `/api/v1/query`: a scalar, or a vector of exactly one sample.
fn prometheus_value(status: u16, body: &[u8]) -> Result<f64, String> {
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        format!(
            "Prometheus answered HTTP {status} with a body that is not JSON: `{}`",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )
    })?;
    if json["status"] != "success" {
        return Err(format!(
            "Prometheus answered HTTP {status}: {}: {}",
            json["errorType"].as_str().unwrap_or("error"),
            json["error"].as_str().unwrap_or("no error message")
        ));
    }
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map_or(&[][..], Vec::as_slice);
            match series {
                [] => return Err("the query returned no series (an empty result)".into()),
                [one] => &one["value"],
                more => {
                    return Err(format!(
                        "the query returned {} series, not one number; aggregate it (e.g. `sum(...)`) or narrow its labels",
                        more.len()
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "the query's result type is `{}`, not a number; use a query that gives an instant vector or a scalar",
                other.unwrap_or("missing")
            ));
        }
    };
    // A sample is `[unix time, "value"]`; the value is a string so that NaN and ±Inf fit.
    let text = sample[1].as_str().ok_or_else(|| {
        format!("Prometheus sent a sample that is not `[time, \"value\"]`: `{sample}`")
    })?;
    // Rust reads `NaN`, `+Inf` and `-Inf` as Prometheus writes them (case-insensitively).
    text.parse::<f64>()
        .ok()
        .ok_or_else(|| format!("Prometheus sent `{text}`, which is not a number"))
}

/// The value of the one sample named `series` whose labels include `labels`.
fn scrape_value(
    text: &str,
    series: &str,
    labels: &BTreeMap<String, String>,
) -> Result<f64, String> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("the metrics page does not parse: {e}"))?;
    let wanted = describe_series(series, labels.iter());
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == series)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    let sample = match matching.as_slice() {
        [] => return Err(format!("no series matches `{wanted}` on the metrics page")),
        [one] => one,
        more => {
            let mut found: Vec<String> = more
                .iter()
                .map(|s| {
                    describe_series(
                        &s.metric,
                        s.labels.iter().collect::<BTreeMap<_, _>>().into_iter(),
                    )
                })
                .collect();
            found.sort();
            return Err(format!(
                "{} series match `{wanted}`, not one; add labels to pick one of {}",
                more.len(),
                found.join(", ")
            ));
        }
    };
    use prometheus_parse::Value as V;
    match sample.value {
        V::Counter(v) | V::Gauge(v) | V::Untyped(v) => Ok(v),
        V::Histogram(_) | V::Summary(_) => Err(format!(
            "`{series}` is a histogram or summary; pick `{series}_sum` or `{series}_count` instead"
        )),
    }
}

fn describe_series<'a>(
    name: &str,
    labels: impl Iterator<Item = (&'a String, &'a String)>,
) -> String {
    let labels: Vec<String> = labels.map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// Percent-encodes a query parameter: everything but RFC 3986's unreserved characters.
/// A few lines, so no crate for it.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    //! Native property tests of what a scraped page or a Prometheus server sends back: both
    //! come from outside the engine, and a page can be written by the very release under test.

    use proptest::prelude::*;
    use shiphat_proptest::{config, timed};

    use super::*;

    /// Lines of the text exposition format, valid and not.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec![
                "# HELP http_requests_total Requests.", "# TYPE http_requests_total counter",
                "# TYPE x gauge", "# TYPE x histogram", "# TYPE x summary", "# TYPE x untyped",
                "# TYPE x bogus", "# TYPE", "# HELP", "#", "",
                "http_requests_total{code=\"200\"} 1027 1395066363000",
                "http_requests_total{code=\"500\",method=\"post\"} 3",
                "x 1", "x NaN", "x +Inf", "x -Inf", "x 1e400", "x -0", "x 0x10", "x", "x{", "x}",
                "x{a=\"b\"", "x{a=\"\\\"\\\\\\n\"} 2", "x{a=b} 1", "x{,} 1", "x{a=\"1\",} 1",
                "x_bucket{le=\"0.1\"} 5", "x_bucket{le=\"+Inf\"} 9", "x_bucket 1", "x_sum 4.5",
                "x_count 9", "x{quantile=\"0.5\"} 0.2", "x{quantile=\"abc\"} 1",
                "x_bucket{le=\"zz\"} 1", "{a=\"b\"} 1", "x 1 notatime", "x 1 2 3",
                "\u{0} 1", "x{é=\"ü\"} 1",
            ])
            .prop_map(str::to_string),
            1 => ".{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any page, valid or not: reading one series from it never panics and is quick.
        #[test]
        fn any_scraped_page_is_read_quickly(
            lines in prop::collection::vec(line(), 0..30),
            series in prop::sample::select(vec!["x", "x_sum", "x_bucket", "http_requests_total", ""]),
            label in prop::option::of(prop::sample::select(vec!["code", "le", "quantile", "a"])),
        ) {
            let labels: BTreeMap<String, String> =
                label.map(|k| (k.to_string(), "200".to_string())).into_iter().collect();
            let page = lines.join("\n");
            let result = timed(|| scrape_value(&page, series, &labels))?;
            if let Err(message) = result {
                prop_assert!(!message.is_empty());
            }
        }

        /// Any text at all as a page.
        #[test]
        fn any_text_as_a_page_is_read_quickly(page in "(?s).{0,300}") {
            timed(|| scrape_value(&page, "x", &BTreeMap::new()))?.ok();
        }

        /// A page with known series gives back exactly the value of the one series asked for,
        /// and says so when none or several match.
        #[test]
        fn scraped_series_give_their_own_value(
            values in prop::collection::vec(
                (0usize..3, any::<f64>().prop_filter("not NaN", |v| !v.is_nan())),
                1..6,
            ),
            want in 0usize..3,
        ) {
            let mut page = String::from("# TYPE req gauge\n");
            for (instance, value) in &values {
                let text = match *value {
                    f64::INFINITY => "+Inf".to_string(),
                    f64::NEG_INFINITY => "-Inf".to_string(),
                    v => format!("{v:?}"),
                };
                page.push_str(&format!("req{{instance=\"i{instance}\"}} {text}\n"));
            }
            let labels = BTreeMap::from([("instance".to_string(), format!("i{want}"))]);
            let matching: Vec<f64> = values
                .iter()
                .filter(|(i, _)| *i == want)
                .map(|(_, v)| *v)
                .collect();
            let got = timed(|| scrape_value(&page, "req", &labels))?;
            match matching.as_slice() {
                [one] => prop_assert_eq!(got, Ok(*one), "{}", page),
                _ => prop_assert!(got.is_err(), "{} gave {:?}", page, got),
            }
        }

        /// Any answer from Prometheus (any status, any body, any JSON shape): a number or a
        /// message, never a panic.
        #[test]
        fn any_prometheus_answer_is_read_quickly(
            status in any::<u16>(),
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..300),
                prop::sample::select(vec![
                    r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2.5"]}}"#,
                    r#"{"status":"success","data":{"resultType":"scalar","result":[1,2.5]}}"#,
                    r#"{"status":"success","data":{"resultType":"scalar","result":"x"}}"#,
                    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                    r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"NaN"]}]}}"#,
                    r#"{"status":"success","data":{"resultType":"vector","result":[{},{}]}}"#,
                    r#"{"status":"success","data":{"resultType":"vector","result":{"a":1}}}"#,
                    r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                    r#"{"status":"success","data":[]}"#, r#"{"status":"error","error":7}"#,
                    r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                    "[]", "null", "1", "\"success\"", "",
                ])
                .prop_map(|s| s.as_bytes().to_vec()),
            ],
        ) {
            timed(|| prometheus_value(status, &body))?.ok();
        }
    }

    // Percent-encoding leaves only unreserved characters, so no query can add a parameter
    // or break out of the URL.
    #[test]
    fn encoded_queries_hold_only_unreserved_characters() {
        let all: String = (0u8..=127).map(char::from).chain(['é', '€', '𝄞']).collect();
        let encoded = encode(&all);
        assert!(
            encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~%".contains(c)),
            "{encoded}"
        );
        assert!(!encoded.contains(['&', '#', '=', '?', '+', ' ']));
    }

    // prometheus-parse 0.2.5 dropped every sample whose name holds a colon, so a recording
    // rule's series read from `/federate` was reported missing (vendor/prometheus-parse).
    #[test]
    fn a_recording_rule_series_is_found_by_its_name() {
        let page = "# TYPE job:http_errors:ratio5m gauge\n\
                    job:http_errors:ratio5m{job=\"api\"} 0.004\n\
                    job:http_errors:ratio5m{job=\"web\"} 0.2\n";
        let labels = BTreeMap::from([("job".to_string(), "api".to_string())]);
        assert_eq!(
            scrape_value(page, "job:http_errors:ratio5m", &labels),
            Ok(0.004)
        );
    }
}
