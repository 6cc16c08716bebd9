//! The statistics behind the failure-ratio alarm.

use crate::timings::Timings;

/// The result of [`two_proportion_z`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// The z statistic (continuity-corrected); positive when the first ratio is the larger.
    pub z: f64,
    /// One-sided p-value: the chance of a z this large if both ratios were equal.
    pub p_value: f64,
}

/// One-sided two-proportion z-test of H0 `p1 <= p2` against H1 `p1 > p2`, for `x1` failures
/// in `n1` trials against `x2` in `n2`.
///
/// `z = (r1 - r2 - c) / sqrt(p (1 - p) (1/n1 + 1/n2))` with the pooled ratio
/// `p = (x1 + x2) / (n1 + n2)` and Yates' continuity correction `c = (1/n1 + 1/n2) / 2`
/// (which shrinks the difference toward zero, never past it). With no failure at all (or
/// nothing but failures) there is no evidence either way: `z = 0`, `p = 0.5`.
/// `n1` and `n2` must be positive; with either 0 the result is `z = 0`, `p = 0.5`.
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> ZTest {
    if n1 == 0 || n2 == 0 {
        return ZTest {
            z: 0.0,
            p_value: 0.5,
        };
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let r1 = x1 as f64 / n1f;
    let r2 = x2 as f64 / n2f;
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se <= 0.0 || !se.is_finite() {
        return ZTest {
            z: 0.0,
            p_value: 0.5,
        };
    }
    let diff = r1 - r2;
    let cc = 0.5 * (1.0 / n1f + 1.0 / n2f);
    let corrected = if diff > 0.0 {
        (diff - cc).max(0.0)
    } else {
        (diff + cc).min(0.0)
    };
    let z = corrected / se;
    ZTest {
        z,
        p_value: 1.0 - normal_cdf(z),
    }
}

/// The mixing spread of [`always_valid`]: the size of failure-ratio difference (in ratio
/// units, 0.1 = 10 percentage points) the test is most sensitive to.
pub const MSPRT_TAU: f64 = 0.1;

/// The result of [`always_valid`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sequential {
    /// The continuity-corrected z statistic of [`two_proportion_z`].
    pub z: f64,
    /// The mixture likelihood ratio Λ of "the first ratio is larger" against "they are equal".
    pub likelihood_ratio: f64,
    /// The always-valid p-value `min(1, 1/Λ)`.
    pub p_value: f64,
}

/// One-sided two-proportion test that stays valid when it is looked at again and again as
/// the counts grow: a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and
/// Walsh, "Always valid inference", 2017) on the normal approximation of the difference of
/// the two ratios.
///
/// With `d = r1 - r2 - c` (difference less Yates' continuity correction
/// `c = (1/n1 + 1/n2) / 2`), its pooled variance `V = p (1 - p) (1/n1 + 1/n2)` and a
/// normal mixing distribution N(0, τ²) over the true difference:
///
/// `Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²)))` when `d > 0`, else `Λ = 1` at most.
///
/// Under H0 (equal ratios) the chance that Λ *ever* reaches `1/α`, however often it is
/// computed, is at most α (Ville's inequality), so rejecting when `1/Λ < α` keeps the
/// false-alarm rate of a whole canary run at α, not α per look, as a fixed-sample z-test would.
pub fn always_valid(x1: u64, n1: u64, x2: u64, n2: u64, tau: f64) -> Sequential {
    let z = two_proportion_z(x1, n1, x2, n2).z;
    let none = Sequential {
        z,
        likelihood_ratio: 1.0,
        p_value: 1.0,
    };
    if n1 == 0 || n2 == 0 {
        return none;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let v = pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f);
    let d = x1 as f64 / n1f - x2 as f64 / n2f - 0.5 * (1.0 / n1f + 1.0 / n2f);
    if v <= 0.0 || !v.is_finite() || d <= 0.0 {
        return none;
    }
    let t2 = tau * tau;
    let log_lambda = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
    let likelihood_ratio = log_lambda.exp();
    Sequential {
        z,
        likelihood_ratio,
        p_value: (-log_lambda).exp().min(1.0),
    }
}

/// The standard normal distribution function Φ(x).
pub fn normal_cdf(x: f64) -> f64 {
    // Φ(x) = erfc(-x / √2) / 2; computed on the side that keeps the precision of small tails.
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function, fractional error below 1.2e-7 everywhere
/// (the Chebyshev fit of Numerical Recipes, `erfcc`).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ans = t * poly.exp();
    if x >= 0.0 {
        ans
    } else {
        2.0 - ans
    }
}

/// The standard normal quantile Φ⁻¹(p) for 0 < p < 1 (Acklam's rational approximation,
/// relative error below 1.2e-9). Returns ±∞ at 0 and 1, NaN outside.
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The result of [`mann_whitney`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// Pairs (canary, primary) where the canary's value is the larger, ties counting one half.
    pub u: f64,
    /// `u / (n1 n2)`: the chance that a random canary value exceeds a random primary one
    /// (0.5 when the two are alike) — the test's effect size.
    pub superiority: f64,
    /// The normal approximation's z, with the tie correction.
    pub z: f64,
    /// One-sided p-value of H1 "the first sample tends to be larger".
    pub p_value: f64,
}

/// Bucket of a value for [`mann_whitney`]: logarithmic, 8 per power of two (9 % wide), so
/// values closer than that are ties. Timer noise of a few percent is no evidence.
fn rank_bucket(x: f64) -> i32 {
    if x <= 0.0 || !x.is_finite() {
        return i32::MIN;
    }
    (x.log2() * 8.0).floor() as i32
}

/// One-sided Mann-Whitney U test: does `a` tend to be larger than `b`? Values are grouped in
/// 9 %-wide logarithmic buckets (ties within a bucket), which makes it linear in the sample
/// sizes and blind to differences too small to matter. `p_value` is 1 with either side empty.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> MannWhitney {
    mann_whitney_counts(a.iter().map(|x| (*x, 1)), b.iter().map(|x| (*x, 1)))
}

/// [`mann_whitney`] over processing-time histograms.
pub fn mann_whitney_timings(a: &Timings, b: &Timings) -> MannWhitney {
    mann_whitney_counts(a.iter(), b.iter())
}

/// [`mann_whitney`] over (value, how many) pairs.
fn mann_whitney_counts(a: impl IntoIterator<Item = (f64, u64)>, b: impl IntoIterator<Item = (f64, u64)>) -> MannWhitney {
    // Buckets from 2^-32 to 2^32 (finer or coarser values share the end buckets).
    let mut buckets = vec![(0.0f64, 0.0f64); 8 * 64 + 1];
    let index = |x: f64| (rank_bucket(x).clamp(-8 * 32, 8 * 32) + 8 * 32) as usize;
    let (mut n1, mut n2) = (0.0, 0.0);
    for (x, n) in a {
        buckets[index(x)].0 += n as f64;
        n1 += n as f64;
    }
    for (x, n) in b {
        buckets[index(x)].1 += n as f64;
        n2 += n as f64;
    }
    if n1 == 0.0 || n2 == 0.0 {
        return MannWhitney { u: 0.0, superiority: 0.5, z: 0.0, p_value: 1.0 };
    }
    let (mut u, mut b_below, mut ties) = (0.0, 0.0, 0.0);
    for (ca, cb) in &buckets {
        u += ca * (b_below + cb / 2.0);
        b_below += cb;
        let t = ca + cb;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let superiority = u / (n1 * n2);
    if var <= 0.0 {
        return MannWhitney { u, superiority, z: 0.0, p_value: if u > mean { 0.0 } else { 1.0 } };
    }
    // Continuity correction of one half toward the mean.
    let z = (u - mean - 0.5 * (u - mean).signum()) / var.sqrt();
    MannWhitney { u, superiority, z, p_value: normal_cdf(-z) }
}
