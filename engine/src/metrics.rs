//! Histograms kept by one shard and merged when scraped.
//!
//! A [`Histogram`] is plain data with fixed bucket bounds: the shard that records into it owns
//! it outright (no atomics, no locks on the data path), a scrape copies it, and copies from
//! every shard add up ([`Histogram::merge`]) into the Prometheus histogram of the broker.

/// Upper bounds of latency buckets, in seconds: 25 µs to 30 s, roughly ×2 apart (wide enough
/// for an fsync of a cached virtio disk and for a fetch long poll, at most 30 s, alike).
pub const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of size buckets, in bytes: 1 KiB to 64 MiB, ×4 apart.
pub const BYTES_BOUNDS: &[f64] =
    &[1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0, 16_777_216.0, 67_108_864.0];

/// Upper bounds of count buckets (appends per group-commit wave): 1 to 4096, ×2 apart.
pub const COUNT_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// A histogram with fixed upper bounds (the last bucket, +Inf, is implicit): per-bucket counts
/// (not cumulative), the sum and the count of observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then the +Inf bucket.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "histogram bounds must ascend");
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub fn latency() -> Self {
        Self::new(LATENCY_BOUNDS_SECONDS)
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    pub fn observe_duration(&mut self, elapsed: std::time::Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// (upper bound, count in that bucket alone) for every bucket including +Inf: what
    /// `prometheus-client` takes (it accumulates them itself).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(self.counts.iter().copied()).collect()
    }

    /// (upper bound, cumulative count) for every bucket including +Inf: the Prometheus form.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }

    /// Adds another shard's histogram of the same bounds.
    pub fn merge(&mut self, other: &Histogram) {
        assert!(std::ptr::eq(self.bounds, other.bounds) || self.bounds == other.bounds, "merging unlike histograms");
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for value in [0.5, 1.0, 1.5, 4.0, 9.0] {
            h.observe(value);
        }
        assert_eq!(h.cumulative_buckets(), vec![(1.0, 2), (2.0, 3), (4.0, 4), (f64::INFINITY, 5)]);
        assert_eq!(h.buckets(), vec![(1.0, 2), (2.0, 1), (4.0, 1), (f64::INFINITY, 1)]);
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 16.0).abs() < 1e-9);
    }

    #[test]
    fn merged_histograms_add_up() {
        let mut a = Histogram::latency();
        let mut b = Histogram::latency();
        a.observe(0.001);
        b.observe(0.001);
        b.observe(3.0);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let buckets = a.cumulative_buckets();
        assert_eq!(buckets.iter().find(|(bound, _)| *bound == 0.001).map(|b| b.1), Some(2));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3)));
    }
}
