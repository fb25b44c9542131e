//! A gauge held up while something lives (a stream, a connection).

use prometheus_client::metrics::gauge::Gauge;

/// Adds one to a gauge now and takes it back when dropped.
#[derive(Debug)]
pub struct Held(Gauge);

impl Held {
    /// Counts one more in `gauge` until the returned value drops.
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_alive() {
        let g = Gauge::<i64>::default();
        let a = Held::new(g.clone());
        let b = Held::new(g.clone());
        assert_eq!(g.get(), 2);
        drop((a, b));
        assert_eq!(g.get(), 0);
    }
}
