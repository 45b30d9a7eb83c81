//! Streaming collection of what a dashboard shows: each chosen latent's top contexts and its
//! non-zero activations.

use rand::seq::SliceRandom;

use crate::error::{Error, Result};

/// One context window around a latent's strongest activation in a context.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextExample {
    /// The caller's id of the context (e.g. its index in the corpus).
    pub context: usize,
    /// Position of the strongest activation within the context.
    pub position: usize,
    /// Position of `tokens[0]` within the context.
    pub start: usize,
    /// Token ids of the window.
    pub tokens: Vec<u32>,
    /// The latent's activation at each token of the window.
    pub activations: Vec<f32>,
    /// The strongest activation (at `position`).
    pub max: f32,
}

/// What was collected for one latent.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentRecord {
    /// The latent's index in the SAE.
    pub latent: usize,
    /// Its strongest contexts, strongest first (one example per context).
    pub top: Vec<ContextExample>,
    /// Every non-zero activation seen, in the order seen.
    pub values: Vec<f32>,
    /// Positions observed in all (the denominator of the firing density).
    pub positions: u64,
}

impl LatentRecord {
    /// The fraction of observed positions where the latent fired (activation ≠ 0).
    pub fn density(&self) -> f64 {
        if self.positions == 0 {
            0.0
        } else {
            self.values.len() as f64 / self.positions as f64
        }
    }
}

/// Keeps each chosen latent's top contexts and non-zero activations over a stream of contexts.
#[derive(Debug, Clone)]
pub struct DashboardCollector {
    records: Vec<LatentRecord>,
    top_n: usize,
    before: usize,
    after: usize,
}

impl DashboardCollector {
    /// For `latents`, keeping `top_n` contexts each, as windows of `before` tokens before and
    /// `after` tokens after the strongest activation.
    pub fn new(latents: Vec<usize>, top_n: usize, before: usize, after: usize) -> Result<Self> {
        if latents.is_empty() || top_n == 0 {
            return Err(Error::Invalid(format!(
                "a dashboard needs ≥ 1 latent and ≥ 1 example each (got {} latents, top_n {top_n})",
                latents.len()
            )));
        }
        let records = latents
            .into_iter()
            .map(|latent| LatentRecord {
                latent,
                top: Vec::new(),
                values: Vec::new(),
                positions: 0,
            })
            .collect();
        Ok(Self {
            records,
            top_n,
            before,
            after,
        })
    }

    /// The latents collected for, in order.
    pub fn latents(&self) -> Vec<usize> {
        self.records.iter().map(|r| r.latent).collect()
    }

    /// Adds one context: its `tokens` `[positions]` and the chosen latents' activations `acts`
    /// `[positions, latents]` (row-major, latents in [`DashboardCollector::latents`] order).
    pub fn observe(&mut self, context: usize, tokens: &[u32], acts: &[f32]) -> Result<()> {
        let (n, m) = (tokens.len(), self.records.len());
        if acts.len() != n * m {
            return Err(Error::Shape {
                what: "dashboard activations".into(),
                expected: format!("[{n} positions, {m} latents] = {} values", n * m),
                got: acts.len().to_string(),
            });
        }
        if let Some(bad) = acts.iter().find(|a| !a.is_finite()) {
            return Err(Error::Invalid(format!(
                "dashboard activations of context {context} hold {bad}"
            )));
        }
        for (j, record) in self.records.iter_mut().enumerate() {
            let column = || (0..n).map(|p| acts[p * m + j]);
            record.positions += n as u64;
            record.values.extend(column().filter(|&a| a != 0.0));
            let Some((position, max)) = column()
                .enumerate()
                .filter(|&(_, a)| a > 0.0)
                .max_by(|a, b| a.1.total_cmp(&b.1))
            else {
                continue;
            };
            let weakest = record.top.last().map_or(f32::NEG_INFINITY, |e| e.max);
            if record.top.len() == self.top_n && max <= weakest {
                continue;
            }
            let start = position.saturating_sub(self.before);
            let end = (position + self.after + 1).min(n);
            let example = ContextExample {
                context,
                position,
                start,
                tokens: tokens[start..end].to_vec(),
                activations: column().skip(start).take(end - start).collect(),
                max,
            };
            let at = record.top.partition_point(|e| e.max >= max);
            record.top.insert(at, example);
            record.top.truncate(self.top_n);
        }
        Ok(())
    }

    /// The records, in [`DashboardCollector::latents`] order.
    pub fn finish(self) -> Vec<LatentRecord> {
        self.records
    }
}

/// Counts of values in equal-width bins from 0 to the largest value.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `bins + 1` bin edges, ascending.
    pub edges: Vec<f32>,
    /// Values per bin (the last bin includes its upper edge).
    pub counts: Vec<u64>,
}

impl Histogram {
    /// `bins` (≥ 1) equal-width bins over `[min(0, least), largest]` of `values`; one empty bin
    /// `[0, 1]` when there are none.
    pub fn of(values: &[f32], bins: usize) -> Self {
        let bins = bins.max(1);
        let lo = values.iter().copied().fold(0.0f32, f32::min);
        let hi = values.iter().copied().fold(lo, f32::max);
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let width = (hi - lo) / bins as f32;
        let edges = (0..=bins).map(|i| lo + width * i as f32).collect();
        let mut counts = vec![0u64; bins];
        for &v in values {
            let i = (((v - lo) / width) as usize).min(bins - 1);
            counts[i] += 1;
        }
        Self { edges, counts }
    }
}

/// The latents a dashboard shows: the `top` latents by activation mass (the sum of a latent's
/// activations over the data, `mass[i]`), largest first, then `random` other latents that fired
/// (mass > 0) drawn with `seed`. Errors when no latent fired.
pub fn choose_latents(mass: &[f64], top: usize, random: usize, seed: u64) -> Result<Vec<usize>> {
    let mut fired: Vec<usize> = (0..mass.len()).filter(|&i| mass[i] > 0.0).collect();
    if fired.is_empty() {
        return Err(Error::Invalid(format!(
            "no latent of {} fired on the data: nothing to show",
            mass.len()
        )));
    }
    fired.sort_by(|&a, &b| mass[b].total_cmp(&mass[a]).then(a.cmp(&b)));
    let top = top.min(fired.len());
    let mut rest = fired.split_off(top);
    let mut rng = metarep_core::rng::seeded(seed);
    rest.shuffle(&mut rng);
    fired.extend(rest.into_iter().take(random));
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn top_contexts_match_a_brute_force_ranking() {
        let mut rng = metarep_core::rng::seeded(3);
        let (contexts, len, latents) = (40, 12, 3);
        let mut c = DashboardCollector::new(vec![5, 1, 8], 6, 3, 2).unwrap();
        let mut all: Vec<(Vec<u32>, Vec<f32>)> = Vec::new();
        for ctx in 0..contexts {
            let tokens: Vec<u32> = (0..len).map(|_| rng.random_range(0..50)).collect();
            let acts: Vec<f32> = (0..len * latents)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        rng.random_range(0.0f32..10.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            c.observe(ctx, &tokens, &acts).unwrap();
            all.push((tokens, acts));
        }
        let records = c.finish();
        for (j, r) in records.iter().enumerate() {
            // Brute force: each context's max of column j, strongest six.
            let mut best: Vec<(f32, usize, usize)> = all
                .iter()
                .enumerate()
                .filter_map(|(ctx, (_, a))| {
                    (0..len)
                        .map(|p| (a[p * latents + j], ctx, p))
                        .filter(|x| x.0 > 0.0)
                        .max_by(|x, y| x.0.total_cmp(&y.0))
                })
                .collect();
            best.sort_by(|x, y| y.0.total_cmp(&x.0));
            best.truncate(6);
            let got: Vec<(f32, usize, usize)> = r
                .top
                .iter()
                .map(|e| (e.max, e.context, e.position))
                .collect();
            assert_eq!(got, best, "latent {}", r.latent);
            let nonzero = all
                .iter()
                .flat_map(|(_, a)| (0..len).map(move |p| a[p * latents + j]))
                .filter(|&v| v != 0.0)
                .count();
            assert_eq!(r.values.len(), nonzero);
            assert_eq!(r.positions, (contexts * len) as u64);
            for e in &r.top {
                let (tokens, acts) = &all[e.context];
                assert_eq!(e.start, e.position.saturating_sub(3));
                assert_eq!(
                    e.tokens,
                    tokens[e.start..(e.position + 3).min(len)].to_vec()
                );
                assert_eq!(e.activations[e.position - e.start], e.max);
                assert_eq!(e.activations[0], acts[e.start * latents + j]);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_it() {
        assert!(DashboardCollector::new(vec![], 3, 1, 1).is_err());
        assert!(DashboardCollector::new(vec![1], 0, 1, 1).is_err());
        let mut c = DashboardCollector::new(vec![1, 2], 3, 1, 1).unwrap();
        let e = c.observe(0, &[1, 2], &[0.0; 3]).unwrap_err().to_string();
        assert!(e.contains("[2 positions, 2 latents]"), "{e}");
        let e = c
            .observe(0, &[1], &[f32::NAN, 0.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        assert!(choose_latents(&[0.0, 0.0], 1, 1, 0).is_err());
    }

    #[test]
    fn histograms_count_every_value_once() {
        let values = [0.1f32, 0.5, 0.5, 1.0, 2.0, 4.0];
        let h = Histogram::of(&values, 4);
        assert_eq!(h.edges, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(h.counts, vec![3, 1, 1, 1]);
        let empty = Histogram::of(&[], 3);
        assert_eq!(empty.counts, vec![0, 0, 0]);
        assert_eq!(*empty.edges.last().unwrap(), 1.0);
    }

    #[test]
    fn latents_are_the_heaviest_then_distinct_random_ones_that_fired() {
        let mass = [0.0, 5.0, 1.0, 9.0, 0.5, 2.0, 0.0, 3.0];
        let chosen = choose_latents(&mass, 2, 3, 7).unwrap();
        assert_eq!(&chosen[..2], &[3, 1]);
        assert_eq!(chosen.len(), 5);
        let mut rest = chosen[2..].to_vec();
        rest.sort();
        rest.dedup();
        assert_eq!(rest.len(), 3);
        assert!(rest.iter().all(|&i| mass[i] > 0.0 && i != 3 && i != 1));
        assert_eq!(choose_latents(&mass, 2, 3, 7).unwrap(), chosen);
        assert_eq!(choose_latents(&mass, 100, 100, 0).unwrap().len(), 6);
    }
}
