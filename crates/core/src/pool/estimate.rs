//! A pool's footprint estimate for a model not measured yet: a fixed cost plus a cost per byte
//! of the model file, fitted to the models the pool's servers have measured. A server's
//! footprint of a model is its runtime's fixed overhead (graph, plan, buffers: tens of KB) plus
//! the weights, so one ratio is wrong at both ends (measured: a 750 B file takes 30 KB, a
//! 190 KB file 1.6× its size); a line fits both.
//!
//! The fit minimises the squared *relative* error (weighted least squares, weight 1/measured²),
//! the figure a planner's headroom is about. With fewer than two distinct file sizes it is the
//! median ratio through zero; before any measurement, [`super::DEFAULT_RATIO`].

/// footprint ≈ `base` + `per_byte` × file bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub base: f64,
    pub per_byte: f64,
}

impl Estimate {
    /// Bytes for a file of `file_bytes`.
    pub fn of(&self, file_bytes: u64) -> u64 {
        (self.base + self.per_byte * file_bytes as f64).ceil() as u64
    }

    /// The fit to `(file bytes, measured bytes)` pairs.
    pub fn fit(points: &[(u64, u64)]) -> Estimate {
        let points: Vec<(f64, f64)> = points
            .iter()
            .filter(|(file, measured)| *file > 0 && *measured > 0)
            .map(|(f, m)| (*f as f64, *m as f64))
            .collect();
        if points.is_empty() {
            return Estimate {
                base: 0.0,
                per_byte: super::DEFAULT_RATIO,
            };
        }
        let through_zero = || {
            let mut ratios: Vec<f64> = points.iter().map(|(f, m)| m / f).collect();
            ratios.sort_by(f64::total_cmp);
            Estimate {
                base: 0.0,
                per_byte: ratios[ratios.len() / 2],
            }
        };
        let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (x, y) in &points {
            let w = 1.0 / (y * y);
            sw += w;
            sx += w * x;
            sy += w * y;
            sxx += w * x * x;
            sxy += w * x * y;
        }
        let det = sw * sxx - sx * sx;
        if det <= f64::EPSILON * sw * sxx {
            return through_zero();
        }
        let per_byte = (sw * sxy - sx * sy) / det;
        let base = (sy - per_byte * sx) / sw;
        match (base >= 0.0, per_byte >= 0.0) {
            (true, true) => Estimate { base, per_byte },
            // Bigger files measured smaller: the sizes say nothing; a flat cost.
            (_, false) => Estimate {
                base: sy / sw,
                per_byte: 0.0,
            },
            // No fixed cost: a line through zero, fitted the same way.
            (false, true) => Estimate {
                base: 0.0,
                per_byte: sxy / sxx,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_cost_plus_the_weights_is_recovered() {
        // As the pool servers measure models/many: ~29.5 KB + 1.5 B per file byte.
        let truth = |f: u64| 29_500 + f * 3 / 2;
        let points: Vec<(u64, u64)> = [753, 1_300, 3_927, 11_610, 55_232, 193_762]
            .iter()
            .map(|f| (*f, truth(*f)))
            .collect();
        let fit = Estimate::fit(&points);
        for file in [500, 8_000, 90_000, 400_000] {
            let (got, want) = (fit.of(file) as f64, truth(file) as f64);
            assert!((got - want).abs() / want < 0.01, "{file}: {got} vs {want}");
        }
        // One ratio would be off by far more at the small end.
        let ratio = Estimate::fit(&[(193_762, truth(193_762))]);
        assert!(ratio.of(753) < truth(753) / 10);
    }

    #[test]
    fn degenerate_measurements_fall_back() {
        assert_eq!(Estimate::fit(&[]).of(100), 200, "the default ratio");
        // One size only: its ratio through zero.
        assert_eq!(Estimate::fit(&[(100, 300), (100, 300)]).of(50), 150);
        // Larger files measured smaller: a flat cost near the measurements.
        let flat = Estimate::fit(&[(100, 1_000), (10_000, 900)]);
        assert_eq!(flat.per_byte, 0.0);
        assert!((900..=1_000).contains(&flat.of(5_000)), "{flat:?}");
        // Proportional sizes: no negative fixed cost.
        let line = Estimate::fit(&[(100, 150), (1_000, 2_100), (10_000, 22_000)]);
        assert!(line.base >= 0.0 && line.per_byte > 0.0, "{line:?}");
    }
}
