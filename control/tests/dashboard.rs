//! The shipped Grafana dashboard (`dashboards/dsrgate.json`) queries only what the daemon
//! exports.
//!
//! The real registry is built with `Metrics::register` over a `Status` that has a VIP, a
//! backend, a BGP peer and a worker with drops, every event metric is bumped once so each
//! family emits samples, and the registry is encoded with prometheus-client's text encoder.
//! The sample names in that output are what Prometheus stores, so a counter is queried as
//! `…_total` and a histogram as `…_bucket`, `…_sum` or `…_count`, never by its bare family
//! name. Every PromQL expression in the dashboard (panel targets and template variables)
//! is tokenized; every metric it names must be one of those sample names, and every label it
//! groups, matches or prints in a legend must be a label of one of its metrics (or a
//! scrape-target label).

mod status_fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use control::api::Metrics;
use control::status::shared;
use prometheus_client::registry::Registry;
use serde_json::Value;
use status_fixture::a_status;

const DASHBOARD: &str = include_str!("../../dashboards/dsrgate.json");

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Sample name → label names, from one scrape of the real registry.
type Exported = BTreeMap<String, BTreeSet<String>>;

/// The text a scrape of the daemon's registry returns.
fn scrape() -> String {
    let mut registry = Registry::default();
    let m = Metrics::register(&mut registry, shared(a_status(10)));
    m.health_transition("198.51.100.11".parse().unwrap(), true, "passed");
    m.announce_transition("192.0.2.10".parse().unwrap(), true, "healthy");
    m.config_reload(true);
    m.snapshot_published(Duration::from_micros(250));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    text
}

/// Sample names and their label names. Label values are quoted strings with `\\`, `\"`
/// and `\n` escapes, so they are skipped character by character rather than split.
fn exported(text: &str) -> Exported {
    let mut out = Exported::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if !line[end..].starts_with('{') {
            continue;
        }
        let mut chars = line[end + 1..].chars();
        let mut name = String::new();
        while let Some(c) = chars.next() {
            match c {
                '=' => {
                    labels.insert(std::mem::take(&mut name));
                    assert_eq!(chars.next(), Some('"'), "label value in {line}");
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                chars.next();
                            }
                            '"' => break,
                            _ => {}
                        }
                    }
                }
                ',' | ' ' => {}
                '}' => break,
                c => name.push(c),
            }
        }
    }
    out
}

/// `# TYPE` families of a scrape.
fn families(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect()
}

/// What one PromQL expression names.
#[derive(Debug, Default, PartialEq)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Aggregation operators: keywords, whether or not `(` follows at once
/// (`sum by (x) (…)`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other keywords and literals that are not metric names.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Metric and label names in a PromQL expression (with Grafana's `$var`, `${var}` and
/// `$__rate_interval` in it). A tokenizer, not a parser: strings, durations and numbers are
/// skipped; an identifier followed by `(` is a function; aggregation operators and binary
/// keywords are skipped; names in `{…}` before a matcher operator and in `by (…)`-style
/// lists are labels; every other identifier is a metric name.
fn promql_names(expr: &str) -> Names {
    let mut names = Names::default();
    let b: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_string = |i: usize| {
        let quote = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != quote {
            if b[j] == '\\' && quote != '`' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    let ident_at = |i: usize| {
        let mut j = i;
        while j < b.len() && ident_char(b[j]) {
            j += 1;
        }
        (b[i..j].iter().collect::<String>(), j)
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '$' {
            // Grafana variable: `${name}` or `$name`.
            i += 1;
            if b.get(i) == Some(&'{') {
                while i < b.len() && b[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
            }
        } else if c == '[' {
            // Range or subquery duration.
            while i < b.len() && b[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Label matchers: `name op "value"`, separated by commas.
            i += 1;
            while i < b.len() && b[i] != '}' {
                if b[i] == '"' || b[i] == '\'' || b[i] == '`' {
                    i = skip_string(i);
                } else if ident_start(b[i]) {
                    let (name, j) = ident_at(i);
                    names.labels.insert(name);
                    i = j;
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers (`0.99`, `1e6`, `0x1f`) and durations (`5m`, `1h30m`).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.' || b[i] == '_') {
                i += 1;
            }
        } else if ident_start(c) {
            let (word, j) = ident_at(i);
            let next = skip_ws(j);
            let lower = word.to_ascii_lowercase();
            i = j;
            if GROUPING.contains(&lower.as_str()) {
                if b.get(next) == Some(&'(') {
                    i = next + 1;
                    while i < b.len() && b[i] != ')' {
                        if ident_start(b[i]) {
                            let (name, j) = ident_at(i);
                            names.labels.insert(name);
                            i = j;
                        } else {
                            i += 1;
                        }
                    }
                    i += 1;
                }
            } else if AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str())
                || b.get(next) == Some(&'(')
            {
                // Operator, keyword or function call.
            } else {
                names.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Label names printed by a Grafana legend format (`{{vip}}:{{port}}`).
fn legend_labels(format: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = format;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.insert(rest[start + 2..start + end].trim().to_owned());
        rest = &rest[start + end + 2..];
    }
    out
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels array") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// One query the dashboard runs: where it is, its PromQL, and extra labels it prints.
struct Query {
    place: String,
    expr: String,
    legend: BTreeSet<String>,
}

fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default().to_owned();
            out.push(Query {
                place: format!("panel {title:?} target {}", t["refId"]),
                expr,
                legend: legend_labels(t["legendFormat"].as_str().unwrap_or_default()),
            });
        }
    }
    // Template variables: `label_values(selector, label)` is Grafana's, not PromQL.
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let place = format!("variable {}", v["name"]);
        let (expr, legend) = match q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        {
            Some((selector, label)) => (selector, BTreeSet::from([label.trim().to_owned()])),
            None => (q, BTreeSet::new()),
        };
        out.push(Query {
            place,
            expr: expr.to_owned(),
            legend,
        });
    }
    out
}

/// Every way the dashboard disagrees with the exported metrics, one line each.
fn problems(dashboard: &Value, exported: &Exported) -> Vec<String> {
    let mut out = Vec::new();
    for q in queries(dashboard) {
        let names = promql_names(&q.expr);
        if names.metrics.is_empty() {
            out.push(format!("{}: no metric in {:?}", q.place, q.expr));
        }
        let mut labels: BTreeSet<&str> = TARGET_LABELS.into();
        let mut all_known = true;
        for m in &names.metrics {
            match exported.get(m) {
                Some(l) => labels.extend(l.iter().map(String::as_str)),
                None => {
                    all_known = false;
                    out.push(format!(
                        "{}: metric {m} is not exported (query: {})",
                        q.place, q.expr
                    ));
                }
            }
        }
        // Labels are only judged against a known set of metrics.
        if !all_known {
            continue;
        }
        for l in names.labels.union(&q.legend) {
            if !labels.contains(l.as_str()) && l != "__name__" {
                out.push(format!(
                    "{}: label {l} is on none of {:?}",
                    q.place, names.metrics
                ));
            }
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("dashboards/dsrgate.json is valid JSON")
}

#[test]
fn every_dashboard_metric_is_exported() {
    let text = scrape();
    let exported = exported(&text);
    // The populated status makes every family emit samples, so the check below sees all of
    // them (a family with no sample would look like a missing metric).
    for f in families(&text) {
        assert!(
            exported
                .keys()
                .any(|s| s == f || s.strip_prefix(f).is_some_and(|r| r.starts_with('_'))),
            "family {f} emitted no sample:\n{text}"
        );
    }
    let d = dashboard();
    let problems = problems(&d, &exported);
    assert!(
        problems.is_empty(),
        "dashboard problems:\n  {}\nexported: {:#?}",
        problems.join("\n  "),
        exported.keys().collect::<Vec<_>>()
    );

    // The issue's panels are all there: the metrics behind each topic are queried.
    let used: BTreeSet<String> = queries(&d)
        .iter()
        .flat_map(|q| promql_names(&q.expr).metrics)
        .collect();
    for m in [
        "dsrgate_vip_packets_total",
        "dsrgate_vip_bytes_total",
        "dsrgate_backend_up",
        "dsrgate_backend_maglev_slots",
        "dsrgate_bgp_session_state",
        "dsrgate_vip_announced",
        "dsrgate_drops_total",
        "dsrgate_steering_packets_total",
        "dsrgate_worker_shed_starts_total",
        "dsrgate_flow_table_entries",
        "dsrgate_flow_table_capacity",
        "dsrgate_flow_table_evictions_total",
        "dsrgate_worker_rx_packets_total",
        "dsrgate_worker_tx_packets_total",
        "dsrgate_snapshot_generation",
        "dsrgate_snapshot_publish_seconds_bucket",
    ] {
        assert!(used.contains(m), "no panel queries {m}");
    }
}

#[test]
fn dashboard_is_importable() {
    let d = dashboard();
    assert!(
        d["__inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "__inputs must declare DS_PROMETHEUS"
    );
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["id"].is_null(), "an exported dashboard has id null");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title:?}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title:?}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title:?}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title:?} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title:?}");
        }
    }
}

#[test]
fn extractor_finds_metrics_and_labels() {
    let n = promql_names(
        r#"sum by (reason) (rate(dsrgate_drops_total{instance=~"$instance", reason!="a,b}"}[$__rate_interval]))"#,
    );
    assert_eq!(n.metrics, BTreeSet::from(["dsrgate_drops_total".into()]));
    assert_eq!(
        n.labels,
        BTreeSet::from(["instance".into(), "reason".into()])
    );

    let n = promql_names(
        "histogram_quantile(0.99, sum by (le) (rate(dsrgate_snapshot_publish_seconds_bucket[5m])))",
    );
    assert_eq!(
        n.metrics,
        BTreeSet::from(["dsrgate_snapshot_publish_seconds_bucket".into()])
    );

    let n = promql_names(
        "8 * max by (vip, backend) (a_slots) / on (vip) group_left sum without (backend) (b_slots offset 1h) > bool 1e3",
    );
    assert_eq!(
        n.metrics,
        BTreeSet::from(["a_slots".into(), "b_slots".into()])
    );
    assert_eq!(n.labels, BTreeSet::from(["vip".into(), "backend".into()]));

    assert_eq!(
        legend_labels("{{name}} {{vip}}:{{ port }}/x"),
        BTreeSet::from(["name".into(), "vip".into(), "port".into()])
    );
}

/// The check fails for a metric the daemon does not export, for a family queried by the
/// wrong name (a counter without `_total`, a histogram by its bare name), and for a label
/// the metric does not have.
#[test]
fn a_bogus_query_is_caught() {
    let exported = exported(&scrape());
    let mut d = dashboard();
    assert!(problems(&d, &exported).is_empty());
    let bogus = [
        (
            r#"rate(dsrgate_no_such_metric_total{instance=~"$instance"}[5m])"#,
            "dsrgate_no_such_metric_total is not exported",
        ),
        (
            "rate(dsrgate_vip_packets[5m])",
            "dsrgate_vip_packets is not exported",
        ),
        (
            "dsrgate_snapshot_publish_seconds",
            "dsrgate_snapshot_publish_seconds is not exported",
        ),
        (
            "sum by (reasn) (rate(dsrgate_drops_total[5m]))",
            "label reasn is on none of",
        ),
    ];
    for (expr, expected) in bogus {
        d["panels"].as_array_mut().unwrap().push(serde_json::json!({
            "id": 9999, "type": "timeseries", "title": "bogus",
            "targets": [{"refId": "A", "expr": expr, "legendFormat": ""}],
        }));
        let p = problems(&d, &exported);
        assert!(
            p.len() == 1 && p[0].contains(expected) && p[0].contains("bogus"),
            "{expr}: {p:?}"
        );
        d["panels"].as_array_mut().unwrap().pop();
    }
}
