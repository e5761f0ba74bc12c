//! Summaries over seeds: mean, sample standard deviation, standard error of a difference of means.

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for a single value) of the
/// finite values of `xs`, and how many there were. `None` when none is finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Option<Self> {
        let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, sd, n })
    }

    /// Standard error of `self.mean − other.mean` for independent samples:
    /// `sqrt(sd₁²/n₁ + sd₂²/n₂)`.
    pub fn se_diff(&self, other: &Spread) -> f64 {
        (self.sd.powi(2) / self.n as f64 + other.sd.powi(2) / other.n as f64).sqrt()
    }

    /// `mean ± sd` with `digits` significant decimals.
    pub fn show(&self, digits: usize) -> String {
        format!("{:.*} ± {:.*}", digits, self.mean, digits, self.sd)
    }
}

/// Median of the finite values (the upper median for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_known_values() {
        // 1, 2, 3, 4: mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3.
        let s = Spread::of(&[1.0, 2.0, f64::NAN, 3.0, 4.0]).unwrap();
        assert_eq!(s.n, 4);
        assert!((s.mean - 2.5).abs() < 1e-12);
        assert!((s.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let one = Spread::of(&[7.0]).unwrap();
        assert_eq!(one.sd, 0.0);
        assert!(Spread::of(&[f64::NAN]).is_none());
        // se of the difference: sqrt(5/3/4 + 0/1).
        assert!((s.se_diff(&one) - (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
    }
}
