//! Power of two choices: draw two distinct endpoints at random (in proportion
//! to their weights) and take the less loaded. It approaches the best choice
//! at a fraction of the cost of scanning every endpoint, and never herds all
//! traffic onto the single least-loaded one.

/// Cumulative weights for weighted sampling; endpoints of weight 0 are skipped.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    cumulative: Vec<u64>,
}

impl Weights {
    /// From per-endpoint weights.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += u64::from(w);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Number of endpoints that may receive traffic.
    pub fn live(&self) -> usize {
        let mut prev = 0;
        self.cumulative
            .iter()
            .filter(|&&c| {
                let live = c > prev;
                prev = c;
                live
            })
            .count()
    }

    /// The endpoint a point in `[0, total)` falls on.
    fn index_of(&self, point: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= point)
    }

    /// One weighted draw.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Option<usize> {
        let total = self.total();
        (total > 0).then(|| self.index_of(rng.u64(0..total)))
    }
}

/// Picks an endpoint: two weighted draws, the lower `load` wins. With one
/// live endpoint it is chosen directly; with none, `None`.
pub fn pick(weights: &Weights, rng: &mut fastrand::Rng, load: impl Fn(usize) -> f64) -> Option<usize> {
    let a = weights.sample(rng)?;
    if weights.live() < 2 {
        return Some(a);
    }
    // Redraw until distinct; bounded so a lopsided weighting cannot spin.
    let mut b = a;
    for _ in 0..8 {
        b = weights.sample(rng)?;
        if b != a {
            break;
        }
    }
    if b == a {
        return Some(a);
    }
    Some(if load(b) < load(a) { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weights_are_never_drawn() {
        let w = Weights::new([0, 5, 0, 5]);
        assert_eq!(w.live(), 2);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            let i = w.sample(&mut rng).expect("live endpoints");
            assert!(i == 1 || i == 3);
        }
        assert_eq!(Weights::new([0, 0]).sample(&mut rng), None);
        assert_eq!(pick(&Weights::new([]), &mut rng, |_| 0.0), None);
    }

    #[test]
    fn draws_follow_weights() {
        let w = Weights::new([1, 3]);
        let mut rng = fastrand::Rng::with_seed(2);
        let ones = (0..40_000).filter(|_| w.sample(&mut rng) == Some(1)).count();
        let share = ones as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn prefers_the_less_loaded_and_spreads_when_equal() {
        let w = Weights::new([1, 1, 1]);
        let mut rng = fastrand::Rng::with_seed(3);
        let loads = [10.0, 1.0, 10.0];
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pick(&w, &mut rng, |i| loads[i]).expect("pick")] += 1;
        }
        // Endpoint 1 wins every draw it appears in: about 2/3 of picks.
        assert!(counts[1] > 1800, "{counts:?}");
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pick(&w, &mut rng, |_| 1.0).expect("pick")] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
