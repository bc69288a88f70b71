//! `GET /metrics` in Prometheus' text format: requests, errors and latency histograms per endpoint, requests in
//! flight and waiting, embedding and decoding batch sizes, tokens generated (its rate is tokens/s), and the
//! sequences decoding now.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The endpoints counted.
pub const ENDPOINTS: [&str; 4] = ["embeddings", "completions", "translations", "models"];

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Upper bounds of the batch-size buckets.
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A Prometheus histogram: cumulative counts per upper bound, the sum and the count.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; one more for +Inf).
    counts: Vec<AtomicU64>,
    /// The sum, in millionths (so that it can be atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// The exposition lines of `name` with `labels` (e.g. `endpoint="x",`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            labels => format!("{{{labels}}}"),
        };
        let _ = writeln!(out, "{name}_sum{labels} {sum}\n{name}_count{labels} {cumulative}");
    }
}

pub struct Metrics {
    requests: [AtomicU64; 4],
    errors: [AtomicU64; 4],
    latency: [Histogram; 4],
    pub in_flight: AtomicUsize,
    pub embedding_batches: AtomicU64,
    pub embedded_sentences: AtomicU64,
    pub embedding_batch_size: Histogram,
    pub generated_tokens: AtomicU64,
    pub decode_steps: AtomicU64,
    pub decode_batch_size: Histogram,
    pub live_sequences: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            errors: Default::default(),
            latency: std::array::from_fn(|_| Histogram::new(&LATENCY_BUCKETS)),
            in_flight: AtomicUsize::new(0),
            embedding_batches: AtomicU64::new(0),
            embedded_sentences: AtomicU64::new(0),
            embedding_batch_size: Histogram::new(&BATCH_BUCKETS),
            generated_tokens: AtomicU64::new(0),
            decode_steps: AtomicU64::new(0),
            decode_batch_size: Histogram::new(&BATCH_BUCKETS),
            live_sequences: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    /// Counts one request to `endpoint`, whether it failed, and how long it took to answer (for a stream: to
    /// its first byte).
    pub fn record(&self, endpoint: &str, failed: bool, took: Duration) {
        if let Some(i) = ENDPOINTS.iter().position(|e| *e == endpoint) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
            if failed {
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
            self.latency[i].observe(took.as_secs_f64());
        }
    }

    /// The text exposition, with `waiting` requests queued for a worker now.
    pub fn render(&self, waiting: usize) -> String {
        let mut out = String::new();
        let per_endpoint = [
            ("qkv_requests_total", "Requests by endpoint.", &self.requests),
            ("qkv_errors_total", "Requests answered with an error.", &self.errors),
        ];
        for (name, help, values) in per_endpoint {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (endpoint, value) in ENDPOINTS.iter().zip(values) {
                let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\"}} {}", value.load(Ordering::Relaxed));
            }
        }
        let name = "qkv_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time to answer (streams: to the first byte).\n# TYPE {name} histogram");
        for (endpoint, histogram) in ENDPOINTS.iter().zip(&self.latency) {
            histogram.render(&mut out, name, &format!("endpoint=\"{endpoint}\","));
        }
        for (name, help, value) in [
            ("qkv_embedding_batches_total", "Embedding batches run.", &self.embedding_batches),
            ("qkv_embedded_sentences_total", "Sentences embedded.", &self.embedded_sentences),
            (
                "qkv_generated_tokens_total",
                "Tokens generated by completions (its rate is tokens/s).",
                &self.generated_tokens,
            ),
            ("qkv_decode_steps_total", "Steps of the continuous decoding batches.", &self.decode_steps),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        for (name, help, histogram) in [
            ("qkv_embedding_batch_size", "Sentences per embedding batch.", &self.embedding_batch_size),
            ("qkv_decode_batch_size", "Sequences per decoding step.", &self.decode_batch_size),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram.render(&mut out, name, "");
        }
        for (name, help, value) in [
            ("qkv_queue_depth", "Requests waiting for a worker.", waiting),
            ("qkv_requests_in_flight", "Requests being answered.", self.in_flight.load(Ordering::Relaxed)),
            (
                "qkv_decoding_sequences",
                "Sequences in the decoding batches.",
                self.live_sequences.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&BATCH_BUCKETS);
        for v in [1.0, 3.0, 3.0, 200.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 207\nx_count 4\n"), "{out}");
    }
}
