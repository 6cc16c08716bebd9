//! Processing times as a histogram: how many messages took each time (to the microsecond).
//!
//! Every source measures into buckets (the embedded queue's and the proxy's histograms), so a
//! window of any length holds a few dozen entries, not one number per message; windows add up
//! and subtract (the dashboard's per-second samples) entry by entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Processing times in milliseconds, as a multiset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timings(BTreeMap<u64, u64>);

fn key(ms: f64) -> Option<u64> {
    (!ms.is_nan()).then(|| (ms.max(0.0) * 1000.0).round() as u64)
}

impl Timings {
    /// `n` messages that took `ms` each (NaN is ignored).
    pub fn add(&mut self, ms: f64, n: u64) {
        if let (Some(k), true) = (key(ms), n > 0) {
            *self.0.entry(k).or_default() += n;
        }
    }

    /// How many times there are.
    pub fn len(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Both windows' times together.
    pub fn merge(&mut self, other: &Timings) {
        for (k, n) in &other.0 {
            *self.0.entry(*k).or_default() += n;
        }
    }

    /// The times of `self` that are not in `other` (a multiset difference).
    pub fn minus(&self, other: &Timings) -> Timings {
        let mut out = BTreeMap::new();
        for (k, n) in &self.0 {
            let left = n.saturating_sub(other.0.get(k).copied().unwrap_or(0));
            if left > 0 {
                out.insert(*k, left);
            }
        }
        Timings(out)
    }

    /// (time in ms, how many), the shortest first.
    pub fn iter(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.0.iter().map(|(k, n)| (*k as f64 / 1000.0, *n))
    }

    /// The `k`-th shortest time (from 0).
    pub fn nth(&self, k: u64) -> Option<f64> {
        let mut seen = 0;
        for (ms, n) in self.iter() {
            seen += n;
            if k < seen {
                return Some(ms);
            }
        }
        None
    }

    /// The `p`-th percentile (0 to 100), interpolated between neighbours as
    /// [`crate::percentile`] does for a list; `None` when empty or `p` is out of range.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.len();
        if n == 0 || !(0.0..=100.0).contains(&p) {
            return None;
        }
        let rank = p / 100.0 * (n - 1) as f64;
        let lo = rank.floor() as u64;
        let frac = rank - lo as f64;
        let a = self.nth(lo)?;
        let b = if frac > 0.0 { self.nth(lo + 1)? } else { a };
        Some(a + (b - a) * frac)
    }
}

impl FromIterator<f64> for Timings {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Timings {
        let mut t = Timings::default();
        for ms in iter {
            t.add(ms, 1);
        }
        t
    }
}

impl From<Vec<f64>> for Timings {
    fn from(v: Vec<f64>) -> Timings {
        v.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_the_list_form() {
        let lists: [&[f64]; 5] = [&[1.0], &[3.0, 1.0, 2.0, 4.0], &[5.0, 5.0, 5.0, 7.5], &[0.2, 0.9, 0.9, 100.0, 3.0], &[10.0, 20.0]];
        for list in lists {
            let t: Timings = list.iter().copied().collect();
            assert_eq!(t.len(), list.len() as u64);
            for p in [0.0, 25.0, 50.0, 90.0, 95.0, 99.0, 100.0] {
                let (a, b) = (t.percentile(p).unwrap(), crate::percentile(list, p).unwrap());
                assert!((a - b).abs() < 1e-9, "{list:?} p{p}: {a} vs {b}");
            }
        }
        assert_eq!(Timings::default().percentile(50.0), None);
        assert_eq!(Timings::from(vec![1.0]).percentile(101.0), None);
    }

    #[test]
    fn windows_add_and_subtract_as_multisets() {
        let wide = Timings::from(vec![1.0, 2.0, 2.0, 3.0]);
        let narrow = Timings::from(vec![2.0, 3.0, 4.0]);
        assert_eq!(wide.minus(&narrow), Timings::from(vec![1.0, 2.0]));
        let mut both = wide.clone();
        both.merge(&narrow);
        assert_eq!(both.len(), 7);
        assert_eq!(both.nth(3), Some(2.0));
        assert_eq!(both.nth(7), None);
        let mut t = Timings::default();
        t.add(f64::NAN, 3);
        t.add(5.0, 0);
        assert!(t.is_empty());
    }
}
