//! Prometheus metrics of one server instance. Each server owns its recorder (rather than
//! installing a process-global one) so that tests can run many servers in one process and each
//! `/metrics` shows only its own traffic.

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::sync::Mutex;
use std::time::Duration;

const REQUESTS: &str = "http_requests_total";
const DURATION: &str = "http_request_duration_seconds";
const MODEL_TOKENS: &str = "cflow_model_tokens_total";
const MODEL_COST: &str = "cflow_model_cost_usd_total";
const MODEL_CALLS: &str = "cflow_model_calls_total";

/// Latency buckets in seconds, dense below 10 ms where the API's targets are.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The exact sum behind `cflow_model_cost_usd_total`: the exported dollars are derived from
    /// integer micro-dollars each time, so they never drift as a float sum would.
    model_cost_micros: Mutex<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_string()), BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        recorder.describe_counter(
            REQUESTS.into(),
            None,
            "HTTP requests answered, by method, route template and status".into(),
        );
        recorder.describe_histogram(
            DURATION.into(),
            Some(metrics::Unit::Seconds),
            "Time to answer HTTP requests, by method, route template and status".into(),
        );
        recorder.describe_counter(
            MODEL_TOKENS.into(),
            None,
            "Tokens of model calls, by kind: input, output, cache_read, cache_write".into(),
        );
        recorder.describe_gauge(
            MODEL_COST.into(),
            None,
            "Cost of model calls since the server started, in US dollars".into(),
        );
        recorder.describe_counter(
            MODEL_CALLS.into(),
            None,
            "Model calls, by whether their model had a price".into(),
        );
        Self {
            recorder,
            handle,
            model_cost_micros: Mutex::new(0),
        }
    }

    /// Records one model call's tokens and cost.
    pub fn record_model_call(
        &self,
        usage: &cflow_core::pricing::Usage,
        cost: &cflow_core::pricing::Cost,
    ) {
        let kinds = [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ];
        for (kind, n) in kinds {
            let key = Key::from_parts(MODEL_TOKENS, vec![Label::new("kind", kind)]);
            self.recorder.register_counter(&key, &METADATA).increment(n);
        }
        let priced = if cost.priced { "true" } else { "false" };
        let key = Key::from_parts(MODEL_CALLS, vec![Label::new("priced", priced)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
        // The sum and the gauge change under one lock, so that concurrent calls cannot leave
        // the gauge at an older total.
        let mut total = self
            .model_cost_micros
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *total = total.saturating_add(cost.micros);
        let key = Key::from_name(MODEL_COST);
        self.recorder
            .register_gauge(&key, &METADATA)
            .set(cflow_core::pricing::micros_to_usd(*total));
    }

    /// Records one answered request. `route` is the matched route template, never the raw path,
    /// so that the number of series stays bounded.
    pub fn record(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = vec![
            Label::new("method", method.to_owned()),
            Label::new("route", route.to_owned()),
            Label::new("status", status.to_string()),
        ];
        let key = Key::from_parts(REQUESTS, labels.clone());
        self.recorder.register_counter(&key, &METADATA).increment(1);
        let key = Key::from_parts(DURATION, labels);
        self.recorder
            .register_histogram(&key, &METADATA)
            .record(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains recorded histogram samples into their buckets; without it they would accumulate
    /// between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.record("GET", "/api/v1/whoami", 200, Duration::from_millis(1));
        let text = a.render();
        assert!(
            text.contains(
                "http_requests_total{method=\"GET\",route=\"/api/v1/whoami\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(!b.render().contains("whoami"));
    }
}
