//! `template:`: an Argo Rollouts `AnalysisTemplate` or `ClusterAnalysisTemplate` file, read
//! from a granted directory and turned into the same raw metrics a `with:` block lists, so
//! that one checker ([`crate::config`]) judges both.
//!
//! It reads what a step can honour: `metrics[]` with the `prometheus` and `web` providers and
//! the measurement keys, and `args` with `{{args.NAME}}`. Everything else that changes what a
//! measurement means (`job`, `kayenta` and the other providers, `dryRun`, `rangeQuery`,
//! `insecure`, `authentication`, `valueFrom`) is refused by name rather than ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{Provider, RawMetric, Web};

/// The largest template file read. Argo's own templates are a few KB; a megabyte is far
/// more than any real one, and keeps a mistaken path (a log, a dump) from being parsed.
const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// The kinds of document a template file may hold.
const KINDS: [&str; 2] = ["AnalysisTemplate", "ClusterAnalysisTemplate"];

/// The providers of Argo Rollouts this plugin does not speak, by their key in `provider:`.
const OTHER_PROVIDERS: [&str; 10] = [
    "job",
    "kayenta",
    "datadog",
    "wavefront",
    "newRelic",
    "cloudWatch",
    "graphite",
    "influxdb",
    "skywalking",
    "plugin",
];

#[derive(Deserialize)]
struct Document {
    kind: Option<String>,
    metadata: Option<Metadata>,
    spec: Option<Value>,
}

#[derive(Deserialize)]
struct Metadata {
    name: Option<String>,
}

/// One declared argument of the template.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Argument {
    name: String,
    value: Option<String>,
    value_from: Option<Value>,
}

/// Reads the template at `path` (relative to the plugin's granted directories) and gives
/// its metrics with `args` put in, or a message that names what is wrong.
pub fn load(path: &str, args: &BTreeMap<String, String>) -> Result<Vec<RawMetric>, String> {
    let metadata = std::fs::metadata(path).map_err(|e| cannot_read(path, &e))?;
    if metadata.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "`template` `{path}` is {} bytes; a template may be at most {MAX_TEMPLATE_BYTES}",
            metadata.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| cannot_read(path, &e))?;
    parse(&text, args).map_err(|e| format!("`template` `{path}`: {e}"))
}

fn cannot_read(path: &str, e: &std::io::Error) -> String {
    format!(
        "`template` `{path}` cannot be read ({e}); it must be inside a directory granted in the step's `allow.read`"
    )
}

/// The metrics of the one template in `text`, with `args` put in.
pub fn parse(text: &str, args: &BTreeMap<String, String>) -> Result<Vec<RawMetric>, String> {
    let mut templates = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let document = Document::deserialize(document).map_err(|e| format!("{e}"))?;
        if document
            .kind
            .as_deref()
            .is_some_and(|kind| KINDS.contains(&kind))
        {
            templates.push(document);
        }
    }
    let document = match templates.len() {
        0 => {
            return Err(
                "holds no `kind: AnalysisTemplate` or `kind: ClusterAnalysisTemplate`".into(),
            );
        }
        1 => templates.pop().expect("one template"),
        n => {
            let names: Vec<String> = templates
                .iter()
                .map(|d| {
                    d.metadata
                        .as_ref()
                        .and_then(|m| m.name.clone())
                        .unwrap_or_else(|| "(unnamed)".into())
                })
                .collect();
            return Err(format!(
                "holds {n} templates ({}); put the one to run in a file of its own",
                names.join(", ")
            ));
        }
    };
    let Some(Value::Object(mut spec)) = document.spec else {
        return Err("has no `spec`".into());
    };
    for key in ["dryRun", "templates"] {
        if spec.contains_key(key) {
            return Err(format!("`spec.{key}` {}", unsupported(key)));
        }
    }
    let declared: Vec<Argument> = match spec.remove("args") {
        Some(args) => serde_json::from_value(args).map_err(|e| format!("`spec.args`: {e}"))?,
        None => Vec::new(),
    };
    let values = resolve_args(&declared, args)?;
    let metrics = match spec.remove("metrics") {
        Some(Value::Array(metrics)) if !metrics.is_empty() => metrics,
        _ => return Err("has no `spec.metrics`; list at least one metric".into()),
    };
    metrics
        .into_iter()
        .enumerate()
        .map(|(i, mut metric)| {
            let name = metric["name"]
                .as_str()
                .map_or_else(|| format!("metrics[{i}]"), |n| format!("`{n}`"));
            substitute(&mut metric, &values).map_err(|e| format!("metric {name}: {e}"))?;
            convert(metric).map_err(|e| format!("metric {name}: {e}"))
        })
        .collect()
}

/// The value of every declared argument: the step's, else the template's default.
fn resolve_args(
    declared: &[Argument],
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let names: Vec<&str> = declared.iter().map(|a| a.name.as_str()).collect();
    if let Some(unknown) = given.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(format!(
            "`args` gives `{unknown}`, which the template does not declare; it declares {}",
            if names.is_empty() {
                "no arguments".into()
            } else {
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    let mut values = BTreeMap::new();
    for arg in declared {
        let value = match (given.get(&arg.name), &arg.value, &arg.value_from) {
            (Some(value), _, _) => value.clone(),
            (None, Some(value), _) => value.clone(),
            (None, None, Some(_)) => {
                return Err(format!(
                    "argument `{}` takes its value from Kubernetes (`valueFrom`), which a step cannot read; give it in the step's `args:`, from a secret with `{{secret: NAME}}`",
                    arg.name
                ));
            }
            (None, None, None) => {
                return Err(format!(
                    "argument `{}` has no value; give it in the step's `args:`",
                    arg.name
                ));
            }
        };
        values.insert(arg.name.clone(), value);
    }
    Ok(values)
}

/// Puts the arguments into every string of `value`, as Argo does: each `{{ ... }}` must be
/// `args.NAME` of a declared argument.
fn substitute(value: &mut Value, args: &BTreeMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(text) => {
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find("}}")
                    .ok_or_else(|| format!("`{text}` opens `{{{{` and never closes it"))?;
                let tag = after[..end].trim();
                let value = tag
                    .strip_prefix("args.")
                    .and_then(|name| args.get(name))
                    .ok_or_else(|| {
                        format!(
                            "`{{{{{tag}}}}}` cannot be resolved; only `{{{{args.NAME}}}}` of an argument the template declares can"
                        )
                    })?;
                out.push_str(value);
                rest = &after[end + 2..];
            }
            out.push_str(rest);
            *text = out;
        }
        Value::Array(items) => {
            for item in items {
                substitute(item, args)?;
            }
        }
        Value::Object(entries) => {
            for item in entries.values_mut() {
                substitute(item, args)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why a key of an AnalysisTemplate is refused.
fn unsupported(key: &str) -> String {
    let why = match key {
        "dryRun" => "would measure without failing, and a step that cannot fail verifies nothing",
        "templates" => "nests other templates by name, which a file cannot reach",
        "consecutiveSuccessLimit" => "is not one of this plugin's limits",
        "rangeQuery" => "asks for a range of values; a measurement here is one number",
        "insecure" => "would skip TLS verification, which the engine always does",
        "authentication" => {
            "needs credentials the template cannot hold here; use the step's `token_secret`"
        }
        "jsonBody" | "body" => "is only for `method: POST` or `PUT`",
        _ => "is not supported",
    };
    format!("is not supported: it {why}")
}

/// One Argo metric (args already in) as a raw metric.
fn convert(metric: Value) -> Result<RawMetric, String> {
    let Value::Object(mut m) = metric else {
        return Err("is not a mapping".into());
    };
    let mut take = |key: &str| m.remove(key);
    let name = match take("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err("has no `name`".into()),
    };
    let text = |value: Option<Value>, key: &str| -> Result<Option<String>, String> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("`{key}` is `{other}`, not a string")),
        }
    };
    // Argo's counts and limits are "IntOrString": `3` or `"3"`, often `"{{args.count}}"`.
    let number = |value: Option<Value>, key: &str| -> Result<Option<i64>, String> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                Ok(s.trim().parse::<i64>().ok())
            }
            Some(other) => Err(format!("`{key}` is `{other}`, not a whole number")),
        }
    };
    let interval = text(take("interval"), "interval")?;
    let initial_delay = text(take("initialDelay"), "initialDelay")?;
    let count = number(take("count"), "count")?;
    let success_condition = text(take("successCondition"), "successCondition")?;
    let failure_condition = text(take("failureCondition"), "failureCondition")?;
    let failure_limit = number(take("failureLimit"), "failureLimit")?;
    let inconclusive_limit = number(take("inconclusiveLimit"), "inconclusiveLimit")?;
    let consecutive_error_limit = number(take("consecutiveErrorLimit"), "consecutiveErrorLimit")?;
    if number(take("consecutiveSuccessLimit"), "consecutiveSuccessLimit")?.unwrap_or(0) != 0 {
        return Err(format!(
            "`consecutiveSuccessLimit` {}",
            unsupported("consecutiveSuccessLimit")
        ));
    }
    // Argo measures a metric with an `interval` and no `count` until the rollout ends; a
    // step has to end by itself.
    if count.is_none() && interval.is_some() {
        return Err(
            "has an `interval` but no `count`; Argo then measures until the rollout ends, which a step cannot do: set `count`"
                .into(),
        );
    }
    let provider = match take("provider") {
        Some(Value::Object(provider)) => provider,
        _ => return Err("has no `provider`".into()),
    };
    if let Some(key) = m.keys().next() {
        return Err(format!(
            "`{key}` is not a key of an Argo metric this plugin reads"
        ));
    }
    let mut raw = RawMetric {
        name,
        interval,
        initial_delay,
        count,
        success_condition,
        failure_condition,
        failure_limit,
        inconclusive_limit,
        consecutive_error_limit,
        ..RawMetric::default()
    };
    let mut keys = provider.into_iter();
    let (kind, settings) = match (keys.next(), keys.next()) {
        (Some(one), None) => one,
        (None, _) => return Err("`provider` names no provider".into()),
        (Some((a, _)), Some((b, _))) => {
            return Err(format!(
                "`provider` names two providers, `{a}` and `{b}`; a metric has one"
            ));
        }
    };
    let Value::Object(mut settings) = settings else {
        return Err(format!("`provider.{kind}` is not a mapping"));
    };
    for key in ["rangeQuery", "insecure", "authentication"] {
        if settings.contains_key(key) {
            return Err(format!("`provider.{kind}.{key}` {}", unsupported(key)));
        }
    }
    let mut take = |key: &str| settings.remove(key);
    match kind.as_str() {
        "prometheus" => {
            raw.provider = Some(Provider::Prometheus);
            raw.address = text(take("address"), "address")?;
            raw.query = text(take("query"), "query")?;
            raw.timeout_seconds = number(take("timeout"), "timeout")?;
            raw.headers = headers(take("headers"))?;
        }
        "web" => {
            let method = text(take("method"), "method")?.unwrap_or_else(|| "GET".into());
            let body = match (take("body"), take("jsonBody")) {
                (Some(_), Some(_)) => {
                    return Err("`body` and `jsonBody` are both set; use one".into());
                }
                (Some(Value::String(body)), None) => Some((body, None)),
                (None, Some(json)) => Some((json.to_string(), Some("application/json"))),
                (Some(other), None) => return Err(format!("`body` is `{other}`, not a string")),
                (None, None) => None,
            };
            let method = method.to_ascii_uppercase();
            if !["GET", "POST", "PUT"].contains(&method.as_str()) {
                return Err(format!(
                    "`provider.web.method` is `{method}`; Argo allows `GET`, `POST` or `PUT`"
                ));
            }
            if body.is_some() && method == "GET" {
                return Err(format!("`provider.web.body` {}", unsupported("body")));
            }
            let mut headers = headers(take("headers"))?;
            let body = body.map(|(body, content_type)| {
                if let Some(content_type) = content_type {
                    headers.push(("Content-Type".into(), content_type.into()));
                }
                body
            });
            raw.provider = Some(Provider::Web);
            raw.address = text(take("url"), "url")?;
            raw.timeout_seconds = number(take("timeoutSeconds"), "timeoutSeconds")?;
            raw.headers = headers;
            raw.web = Some(Web {
                method,
                body,
                json_path: text(take("jsonPath"), "jsonPath")?,
            });
        }
        other if OTHER_PROVIDERS.contains(&other) => {
            return Err(format!(
                "the `{other}` provider is not supported; this plugin measures with `prometheus` and `web` (or, outside templates, `scrape`)"
            ));
        }
        other => return Err(format!("`provider.{other}` is not a provider Argo has")),
    }
    if let Some(key) = settings.keys().next() {
        return Err(format!(
            "`provider.{kind}.{key}` is not a key this plugin reads"
        ));
    }
    Ok(raw)
}

/// Argo's `headers: [{key, value}]`.
fn headers(value: Option<Value>) -> Result<Vec<(String, String)>, String> {
    #[derive(Deserialize)]
    struct Header {
        key: String,
        value: String,
    }
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let list: Vec<Header> = serde_json::from_value(value).map_err(|e| format!("`headers`: {e}"))?;
    Ok(list.into_iter().map(|h| (h.key, h.value)).collect())
}

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;

    /// The first AnalysisTemplate of Argo Rollouts' docs/features/analysis.md, as written.
    const SUCCESS_RATE: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: success-rate
spec:
  args:
  - name: service-name
  metrics:
  - name: success-rate
    interval: 5m
    # NOTE: prometheus queries return results in the form of a vector.
    # So it is common to access the index 0 of the returned array to obtain the value
    successCondition: result[0] >= 0.95
    failureLimit: 3
    count: 10
    provider:
      prometheus:
        address: http://prometheus.example.com:9090
        query: |
          sum(irate(
            istio_requests_total{reporter="source",destination_service=~"{{args.service-name}}",response_code!~"5.*"}[5m]
          )) /
          sum(irate(
            istio_requests_total{reporter="source",destination_service=~"{{args.service-name}}"}[5m]
          ))
"#;

    /// The `args-example` of the same page: defaults, a secret, and a web metric.
    const ARGS_EXAMPLE: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: args-example
spec:
  args:
  # required in Rollout due to no default value
  - name: service-name
  - name: stable-hash
  - name: latest-hash
  # optional in Rollout given the default value
  - name: api-url
    value: http://example/measure
  # from secret
  - name: api-token
    valueFrom:
      secretKeyRef:
        name: token-secret
        key: apiToken
  metrics:
  - name: webmetric
    successCondition: result == 'true'
    provider:
      web:
        # placeholders are resolved when an AnalysisRun is created
        url: "{{ args.api-url }}?service={{ args.service-name }}"
        headers:
          - key: Authorization
            value: "Bearer {{ args.api-token }}"
        jsonPath: "{$.results.ok}"
"#;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn argos_own_prometheus_template_reads_as_written() {
        let metrics = parse(SUCCESS_RATE, &args(&[("service-name", "web")])).unwrap();
        let [m] = metrics.as_slice() else {
            panic!("one metric")
        };
        assert_eq!(m.name, "success-rate");
        assert_eq!(m.provider, Some(Provider::Prometheus));
        assert_eq!(
            m.address.as_deref(),
            Some("http://prometheus.example.com:9090")
        );
        let query = m.query.as_deref().unwrap();
        assert!(
            query.contains(r#"destination_service=~"web",response_code!~"5.*""#),
            "{query}"
        );
        assert!(!query.contains("{{"), "{query}");
        assert_eq!(m.interval.as_deref(), Some("5m"));
        assert_eq!(m.count, Some(10));
        assert_eq!(m.failure_limit, Some(3));
        assert_eq!(m.success_condition.as_deref(), Some("result[0] >= 0.95"));
    }

    #[test]
    fn argos_args_example_reads_with_the_secret_given_in_args() {
        // Without `api-token`, its `valueFrom` is named: a step cannot read Kubernetes.
        let given = args(&[
            ("service-name", "web"),
            ("stable-hash", "a"),
            ("latest-hash", "b"),
        ]);
        let e = parse(ARGS_EXAMPLE, &given).err().unwrap();
        assert!(
            e.contains("argument `api-token` takes its value from Kubernetes (`valueFrom`)"),
            "{e}"
        );
        let mut given = given;
        given.insert("api-token".into(), "t0ken".into());
        let metrics = parse(ARGS_EXAMPLE, &given).unwrap();
        let m = &metrics[0];
        assert_eq!(m.provider, Some(Provider::Web));
        assert_eq!(
            m.address.as_deref(),
            Some("http://example/measure?service=web")
        );
        assert_eq!(
            m.headers,
            [("Authorization".to_string(), "Bearer t0ken".to_string())]
        );
        let web = m.web.as_ref().unwrap();
        assert_eq!(web.method, "GET");
        assert_eq!(web.json_path.as_deref(), Some("{$.results.ok}"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let refused = |metric: &str| {
            let text = format!(
                "kind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  metrics:\n  - name: m\n    count: 1\n{metric}"
            );
            parse(&text, &BTreeMap::new()).err().unwrap()
        };
        let e = refused("    provider:\n      job:\n        spec: {}\n");
        assert!(e.contains("the `job` provider is not supported"), "{e}");
        let e = refused("    provider:\n      kayenta:\n        address: x\n");
        assert!(e.contains("the `kayenta` provider is not supported"), "{e}");
        let e = refused(
            "    provider:\n      prometheus:\n        address: http://p\n        query: up\n        rangeQuery: {step: 1m}\n",
        );
        assert!(
            e.contains("`provider.prometheus.rangeQuery` is not supported"),
            "{e}"
        );
        let e = refused(
            "    consecutiveSuccessLimit: 2\n    provider:\n      prometheus: {address: http://p, query: up}\n",
        );
        assert!(
            e.contains("`consecutiveSuccessLimit` is not supported"),
            "{e}"
        );
        let e = refused(
            "    provider:\n      prometheus: {address: http://p, query: '{{args.nope}}'}\n",
        );
        assert!(e.contains("`{{args.nope}}` cannot be resolved"), "{e}");
        let e = refused("    provider:\n      web: {url: http://w, insecure: true}\n");
        assert!(
            e.contains("`provider.web.insecure` is not supported"),
            "{e}"
        );
        let text = "kind: AnalysisTemplate\nspec:\n  dryRun: [{metricName: m}]\n  metrics: []\n";
        let e = parse(text, &BTreeMap::new()).err().unwrap();
        assert!(e.contains("`spec.dryRun` is not supported"), "{e}");
        let e = parse("kind: Rollout\n", &BTreeMap::new()).err().unwrap();
        assert!(e.contains("holds no `kind: AnalysisTemplate`"), "{e}");
        let e = parse(SUCCESS_RATE, &args(&[("service-name", "w"), ("typo", "x")]))
            .err()
            .unwrap();
        assert!(
            e.contains("`args` gives `typo`, which the template does not declare"),
            "{e}"
        );
    }

    // A few hundred bytes of nested YAML aliases expand to billions of nodes; the file is
    // read by whoever can write a template, so it must be refused, and quickly.
    #[test]
    fn a_template_of_nested_aliases_is_refused_quickly() {
        let mut text = String::from(
            "kind: AnalysisTemplate\nspec:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "  a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        text.push_str("  metrics: *a11\n");
        let started = std::time::Instant::now();
        assert!(parse(&text, &BTreeMap::new()).is_err());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    use proptest::prelude::*;

    proptest::proptest! {
        #![proptest_config(shiphat_proptest::config(256))]

        /// Any template text: parsed into metrics or refused with a message, never a panic,
        /// and quickly.
        #[test]
        fn any_template_is_read_quickly(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => proptest::sample::select(vec![
                        "kind: AnalysisTemplate", "kind: ClusterAnalysisTemplate", "---",
                        "spec:", "  args:", "  - name: a", "    value: '1'", "    valueFrom: {}",
                        "  metrics:", "  - name: m", "    count: 2", "    count: '{{args.a}}'",
                        "    interval: 1s", "    failureLimit: -1", "    successCondition: result > 0",
                        "    provider:", "      prometheus: {address: 'http://p', query: up}",
                        "      web: {url: 'http://w/{{ args.a }}', jsonPath: '{$.a[0]}'}",
                        "      job: {}", "      web: {url: x, method: DELETE}", "{{", "}}",
                        "  dryRun: []", "metadata: {name: t}", "&a [*a]", "*b", "- [", "]",
                    ])
                    .prop_map(str::to_string),
                    1 => ".{0,30}",
                ],
                0..24,
            ),
        ) {
            let text = lines.join("\n");
            let result = shiphat_proptest::timed(|| parse(&text, &args(&[("a", "1")])))?;
            if let Err(message) = result {
                proptest::prop_assert!(!message.is_empty());
            }
        }

        /// Any `jsonPath`: parsed or refused, never a panic.
        #[test]
        fn any_json_path_is_read_quickly(path in "[{}$.\\[\\]'\"a-z0-9*?:@, ]{0,20}") {
            let json = serde_json::json!({"a": [{"b": 1}], "c": {"d": "e"}});
            shiphat_proptest::timed(|| {
                if let Ok(path) = crate::config::JsonPath::parse(&path) {
                    let _ = path.find(&json);
                }
            })?;
        }
    }

    // Argo measures a metric with an interval and no count until the rollout ends.
    #[test]
    fn an_endless_metric_is_refused() {
        let e = parse(
            &SUCCESS_RATE.replace("    count: 10\n", ""),
            &args(&[("service-name", "w")]),
        )
        .err()
        .unwrap();
        assert!(e.contains("has an `interval` but no `count`"), "{e}");
    }

    // Counts and limits are Kubernetes IntOrString: a template often passes them as args.
    #[test]
    fn counts_and_limits_may_be_strings_from_args() {
        let text = SUCCESS_RATE
            .replace(
                "  - name: service-name\n",
                "  - name: service-name\n  - name: count\n    value: \"4\"\n",
            )
            .replace("count: 10", "count: \"{{args.count}}\"");
        let metrics = parse(&text, &args(&[("service-name", "w")])).unwrap();
        assert_eq!(metrics[0].count, Some(4));
    }
}
