//! `spillway dashboard export`: a Grafana dashboard over spillway's metrics.
//!
//! One row of panels per hop (bus, sources, consumers, triggers, workflows,
//! process, alerts), each a time series of PromQL over the names `/metrics`
//! serves (a test checks every name exists). The Prometheus data source is a
//! dashboard variable, so the JSON imports into any Grafana.

use serde_json::{json, Value};

/// A panel: title, unit, and (PromQL, legend) targets.
struct Panel {
    title: &'static str,
    unit: &'static str,
    targets: &'static [(&'static str, &'static str)],
}

const PANELS: &[Panel] = &[
    Panel {
        title: "Queue depth vs max_msgs",
        unit: "short",
        targets: &[
            ("spillway_bus_messages", "depth {{stream}}"),
            ("spillway_bus_max_messages", "max_msgs {{stream}}"),
        ],
    },
    Panel {
        title: "Bus bytes vs max_bytes (broker memory)",
        unit: "bytes",
        targets: &[
            ("spillway_bus_bytes", "bytes {{stream}}"),
            ("spillway_bus_max_bytes", "max_bytes {{stream}}"),
        ],
    },
    Panel {
        title: "Bus publishes and refusals /s",
        unit: "ops",
        targets: &[
            ("rate(spillway_bus_published_total[1m])", "published {{stream}}"),
            (
                "sum by (stream, reason) (rate(spillway_bus_rejected_total[1m]))",
                "rejected {{reason}}",
            ),
            ("rate(spillway_bus_discarded_total[1m])", "discarded {{stream}}"),
        ],
    },
    Panel {
        title: "Source requests by outcome /s",
        unit: "reqps",
        targets: &[(
            "sum by (source, event, outcome) (rate(spillway_source_events_total[1m]))",
            "{{source}}/{{event}} {{outcome}}",
        )],
    },
    Panel {
        title: "Producer block time (mean, p99)",
        unit: "s",
        targets: &[
            (
                "rate(spillway_producer_block_seconds_sum[1m]) / rate(spillway_producer_block_seconds_count[1m])",
                "mean {{source}}",
            ),
            (
                "histogram_quantile(0.99, sum by (le, source) (rate(spillway_producer_block_seconds_bucket[5m])))",
                "p99 {{source}}",
            ),
        ],
    },
    Panel {
        title: "Consumer lag and pending acks",
        unit: "short",
        targets: &[
            ("spillway_consumer_lag", "lag {{sensor}}/{{trigger}}"),
            ("spillway_consumer_ack_pending", "ack pending {{sensor}}/{{trigger}}"),
        ],
    },
    Panel {
        title: "Message age (oldest unacked, p99 at trigger start)",
        unit: "s",
        targets: &[
            (
                "spillway_oldest_unacked_age_seconds",
                "oldest {{sensor}}/{{trigger}}",
            ),
            (
                "histogram_quantile(0.99, sum by (le, sensor) (rate(spillway_event_age_seconds_bucket[5m])))",
                "p99 {{sensor}}",
            ),
        ],
    },
    Panel {
        title: "Sensor latency (mean, p99)",
        unit: "s",
        targets: &[
            (
                "rate(spillway_sensor_processing_seconds_sum[5m]) / rate(spillway_sensor_processing_seconds_count[5m])",
                "mean {{sensor}}",
            ),
            (
                "histogram_quantile(0.99, sum by (le, sensor) (rate(spillway_sensor_processing_seconds_bucket[5m])))",
                "p99 {{sensor}}",
            ),
        ],
    },
    Panel {
        title: "Trigger invocations by outcome /s",
        unit: "ops",
        targets: &[(
            "sum by (sensor, trigger, outcome) (rate(spillway_trigger_invocations_total[1m]))",
            "{{sensor}}/{{trigger}} {{outcome}}",
        )],
    },
    Panel {
        title: "Trigger in flight vs concurrency limit",
        unit: "short",
        targets: &[
            ("spillway_trigger_inflight", "in flight {{sensor}}/{{trigger}}"),
            (
                "spillway_trigger_concurrency_limit",
                "limit {{sensor}}/{{trigger}}",
            ),
        ],
    },
    Panel {
        title: "Workflows pending / running vs semaphores",
        unit: "short",
        targets: &[
            ("spillway_workflows_pending", "pending {{template}}"),
            ("spillway_workflows_running", "running {{template}}"),
            ("spillway_semaphore_limit", "limit {{name}}"),
        ],
    },
    Panel {
        title: "Backlog (stored for later)",
        unit: "short",
        targets: &[("spillway_backlog_events", "events")],
    },
    Panel {
        title: "Process memory (RSS)",
        unit: "bytes",
        targets: &[("spillway_process_resident_memory_bytes", "rss")],
    },
    Panel {
        title: "Alerts firing",
        unit: "short",
        targets: &[
            ("spillway_alerts_firing > 0", "{{alertname}} ({{severity}})"),
            (
                "sum by (outcome) (rate(spillway_alert_notifications_total[5m]))",
                "notifications {{outcome}}",
            ),
        ],
    },
];

/// The dashboard as Grafana's JSON model.
pub fn grafana() -> Value {
    let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    let panels: Vec<Value> = PANELS
        .iter()
        .enumerate()
        .map(|(i, panel)| {
            let targets: Vec<Value> = panel
                .targets
                .iter()
                .zip('A'..='Z')
                .map(|((expr, legend), ref_id)| {
                    json!({
                        "datasource": datasource,
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": ref_id.to_string(),
                    })
                })
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": panel.title,
                "datasource": datasource,
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": targets,
            })
        })
        .collect();
    json!({
        "title": "spillway",
        "uid": "spillway",
        "tags": ["spillway", "backpressure"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
        }]},
        "annotations": {"list": []},
        "panels": panels,
    })
}

/// Every PromQL expression of the dashboard.
pub fn exprs() -> Vec<&'static str> {
    PANELS
        .iter()
        .flat_map(|p| p.targets.iter().map(|(expr, _)| *expr))
        .collect()
}
