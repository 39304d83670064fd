//! The daemon's Prometheus metrics, encoded by `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub workflow: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    pub workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

type HistogramFamily = Family<WorkflowLabels, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // From a millisecond (a no-op step) to about half an hour (a slow rollout), doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

pub struct Metrics {
    registry: Registry,
    pub runs: Family<RunLabels, Counter>,
    pub step_duration: HistogramFamily,
    pub plugin_faults: Family<KindLabels, Counter>,
    pub limit_hits: Family<KindLabels, Counter>,
    pub queue_depth: Gauge,
    pub running: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shiphat");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Runs by workflow and the status they reached",
            runs.clone(),
        );
        let step_duration = HistogramFamily::new_with_constructor(step_histogram);
        registry.register(
            "step_duration_seconds",
            "How long finished steps took, by workflow",
            step_duration.clone(),
        );
        let plugin_faults = Family::<KindLabels, Counter>::default();
        registry.register(
            "plugin_faults",
            "Steps ended by a plugin fault (trap, panic, bad output), by kind",
            plugin_faults.clone(),
        );
        let limit_hits = Family::<KindLabels, Counter>::default();
        registry.register(
            "limit_hits",
            "Steps stopped by a limit (timeout, memory, stack), by limit",
            limit_hits.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Runs waiting for their concurrency key",
            queue_depth.clone(),
        );
        let running = Gauge::default();
        registry.register("runs_running", "Runs in progress", running.clone());
        Metrics {
            registry,
            runs,
            step_duration,
            plugin_faults,
            limit_hits,
            queue_depth,
            running,
        }
    }

    pub fn run_status(&self, workflow: &str, status: &str) {
        self.runs
            .get_or_create(&RunLabels {
                workflow: workflow.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// Counts a finished step by its duration and, when it failed, by why.
    pub fn step_finished(&self, workflow: &str, seconds: f64, error_kind: Option<&str>) {
        self.step_duration
            .get_or_create(&WorkflowLabels {
                workflow: workflow.to_owned(),
            })
            .observe(seconds);
        let labels = |kind: &str| KindLabels {
            kind: kind.to_owned(),
        };
        match error_kind {
            Some(kind @ ("trap" | "panic" | "bad_output")) => {
                self.plugin_faults.get_or_create(&labels(kind)).inc();
            }
            Some(kind @ ("timeout" | "memory" | "stack_overflow")) => {
                self.limit_hits.get_or_create(&labels(kind)).inc();
            }
            _ => {}
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
