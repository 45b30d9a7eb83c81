//! Components ranked by a score: heads from a `[layer][head]` grid, neurons from a
//! `[layer][neuron]` grid. Sorting is stable, so ties keep layer-major order.

use metarep_model::Component;

/// Heads of `scores: [layer][head]`, highest score first.
pub fn ranked_heads(scores: &[Vec<f64>]) -> Vec<(Component, f64)> {
    let mut all: Vec<(Component, f64)> = scores
        .iter()
        .enumerate()
        .flat_map(|(layer, hs)| {
            hs.iter()
                .enumerate()
                .map(move |(head, &s)| (Component::Head { layer, head }, s))
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all
}

/// Neurons of `scores: [layer][neuron]`, largest magnitude first (signed values kept).
pub fn ranked_neurons_by_magnitude(scores: &[Vec<f64>]) -> Vec<(Component, f64)> {
    let mut all: Vec<(Component, f64)> = scores
        .iter()
        .enumerate()
        .flat_map(|(layer, ns)| {
            ns.iter()
                .enumerate()
                .map(move |(neuron, &s)| (Component::Neuron { layer, neuron }, s))
        })
        .collect();
    all.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_by_score_and_neurons_by_magnitude() {
        let h = ranked_heads(&[vec![0.1, 0.7], vec![0.7, -0.2]]);
        let names: Vec<String> = h.iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(names, ["L0H1", "L1H0", "L0H0", "L1H1"]);
        let n = ranked_neurons_by_magnitude(&[vec![0.1, -0.9], vec![0.5]]);
        assert_eq!(
            n[0],
            (
                Component::Neuron {
                    layer: 0,
                    neuron: 1
                },
                -0.9
            )
        );
        assert_eq!(n[2].0.to_string(), "L0N0");
    }
}
