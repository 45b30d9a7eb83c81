//! Systems with exactly known latent state, run for many random trajectories; each visited
//! state is a binary feature vector.
//!
//! - **BFS / DFS** on a random connected graph of `nodes` nodes (a random spanning tree plus
//!   each other edge with probability `edge_prob`), from a random start: after each
//!   expansion the state is `current:i` (the node just expanded, one-hot), `visited:i`
//!   (discovered so far) and `frontier:i` (discovered, not yet expanded: the queue or stack).
//! - **Stack machine**: a random program of `program_len` instructions (`push v`, `pop`, `dup`,
//!   `add` mod `values`, `swap`; one that would over- or underflow the `depth`-slot stack is a
//!   no-op) run in a loop for `2 · program_len` steps; the state is `pc:p` (one-hot) and
//!   `slot{d}={v}` (slot `d` from the bottom holds value `v`).

use std::collections::VecDeque;
use std::ops::Range;

use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which system, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SystemSpec {
    /// Breadth-first search.
    Bfs {
        /// Graph nodes.
        nodes: usize,
        /// Probability of each non-tree edge.
        edge_prob: f64,
    },
    /// Depth-first search.
    Dfs {
        /// Graph nodes.
        nodes: usize,
        /// Probability of each non-tree edge.
        edge_prob: f64,
    },
    /// The stack machine.
    StackMachine {
        /// Instructions per program.
        program_len: usize,
        /// Stack slots.
        depth: usize,
        /// Distinct stack values.
        values: usize,
    },
}

/// Trajectories of binary states.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTrajectories {
    /// Feature names, `F` of them.
    pub features: Vec<String>,
    /// States `[rows, F]`, row-major, values 0 or 1.
    pub states: Vec<f32>,
    /// Rows of each trajectory.
    pub trajectories: Vec<Range<usize>>,
}

impl StateTrajectories {
    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.features.len()
    }

    /// Number of states.
    pub fn rows(&self) -> usize {
        self.states.len() / self.features.len().max(1)
    }
}

impl SystemSpec {
    /// Short name (`bfs`, `dfs`, `stack`).
    pub fn name(&self) -> &'static str {
        match self {
            SystemSpec::Bfs { .. } => "bfs",
            SystemSpec::Dfs { .. } => "dfs",
            SystemSpec::StackMachine { .. } => "stack",
        }
    }

    /// The names of its state features.
    pub fn features(&self) -> Vec<String> {
        match *self {
            SystemSpec::Bfs { nodes, .. } | SystemSpec::Dfs { nodes, .. } => {
                ["current", "visited", "frontier"]
                    .iter()
                    .flat_map(|k| (0..nodes).map(move |i| format!("{k}:{i}")))
                    .collect()
            }
            SystemSpec::StackMachine {
                program_len,
                depth,
                values,
            } => (0..program_len)
                .map(|p| format!("pc:{p}"))
                .chain((0..depth).flat_map(|d| (0..values).map(move |v| format!("slot{d}={v}"))))
                .collect(),
        }
    }

    /// Runs `trajectories` random trajectories from `seed`.
    pub fn generate(&self, trajectories: usize, seed: u64) -> Result<StateTrajectories> {
        self.validate()?;
        let features = self.features();
        let f = features.len();
        let mut states = Vec::new();
        let mut ranges = Vec::with_capacity(trajectories);
        for t in 0..trajectories {
            let mut rng = seeded(derive_seed(
                seed,
                &format!("{}/trajectory/{t}", self.name()),
            ));
            let start = states.len() / f;
            match *self {
                SystemSpec::Bfs { nodes, edge_prob } => traverse(
                    &random_graph(nodes, edge_prob, &mut rng),
                    true,
                    &mut rng,
                    &mut states,
                ),
                SystemSpec::Dfs { nodes, edge_prob } => traverse(
                    &random_graph(nodes, edge_prob, &mut rng),
                    false,
                    &mut rng,
                    &mut states,
                ),
                SystemSpec::StackMachine {
                    program_len,
                    depth,
                    values,
                } => run_stack(program_len, depth, values, &mut rng, &mut states),
            }
            ranges.push(start..states.len() / f);
        }
        Ok(StateTrajectories {
            features,
            states,
            trajectories: ranges,
        })
    }

    fn validate(&self) -> Result<()> {
        let ok = match *self {
            SystemSpec::Bfs { nodes, edge_prob } | SystemSpec::Dfs { nodes, edge_prob } => {
                nodes >= 2 && (0.0..=1.0).contains(&edge_prob)
            }
            SystemSpec::StackMachine {
                program_len,
                depth,
                values,
            } => program_len >= 1 && depth >= 1 && values >= 2,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!("invalid system {self:?}")))
        }
    }
}

/// Adjacency lists of a random connected graph.
fn random_graph(n: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    for i in 1..n {
        let parent = order[rng.random_range(0..i)];
        adj[order[i]].push(parent);
        adj[parent].push(order[i]);
    }
    for a in 0..n {
        for b in a + 1..n {
            if !adj[a].contains(&b) && rng.random::<f64>() < p {
                adj[a].push(b);
                adj[b].push(a);
            }
        }
    }
    for list in adj.iter_mut() {
        list.sort_unstable();
    }
    adj
}

/// BFS (`queue`) or DFS from a random start; appends one state per expansion.
fn traverse(adj: &[Vec<usize>], queue: bool, rng: &mut ChaCha8Rng, out: &mut Vec<f32>) {
    let n = adj.len();
    let mut visited = vec![false; n];
    let mut frontier: VecDeque<usize> = VecDeque::new();
    let start = rng.random_range(0..n);
    visited[start] = true;
    frontier.push_back(start);
    while let Some(node) = if queue {
        frontier.pop_front()
    } else {
        frontier.pop_back()
    } {
        for &m in &adj[node] {
            if !visited[m] {
                visited[m] = true;
                frontier.push_back(m);
            }
        }
        let mut s = vec![0f32; 3 * n];
        s[node] = 1.0;
        for i in 0..n {
            if visited[i] {
                s[n + i] = 1.0;
            }
        }
        for &i in &frontier {
            s[2 * n + i] = 1.0;
        }
        out.extend(s);
    }
}

/// Runs one random program for `2 · len` steps; appends the state before each step.
fn run_stack(len: usize, depth: usize, values: usize, rng: &mut ChaCha8Rng, out: &mut Vec<f32>) {
    #[derive(Clone, Copy)]
    enum Op {
        Push(usize),
        Pop,
        Dup,
        Add,
        Swap,
    }
    let program: Vec<Op> = (0..len)
        .map(|_| match rng.random_range(0..6) {
            0 | 1 => Op::Push(rng.random_range(0..values)),
            2 => Op::Pop,
            3 => Op::Dup,
            4 => Op::Add,
            _ => Op::Swap,
        })
        .collect();
    let mut stack: Vec<usize> = Vec::with_capacity(depth);
    for t in 0..2 * len {
        let pc = t % len;
        let mut s = vec![0f32; len + depth * values];
        s[pc] = 1.0;
        for (d, &v) in stack.iter().enumerate() {
            s[len + d * values + v] = 1.0;
        }
        out.extend(s);
        match program[pc] {
            Op::Push(v) if stack.len() < depth => stack.push(v),
            Op::Pop if !stack.is_empty() => {
                stack.pop();
            }
            Op::Dup if !stack.is_empty() && stack.len() < depth => {
                stack.push(stack[stack.len() - 1])
            }
            Op::Add if stack.len() >= 2 => {
                let (a, b) = (stack.pop().unwrap_or(0), stack.pop().unwrap_or(0));
                stack.push((a + b) % values);
            }
            Op::Swap if stack.len() >= 2 => {
                let l = stack.len();
                stack.swap(l - 1, l - 2);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfs_and_dfs_states_are_consistent() {
        for spec in [
            SystemSpec::Bfs {
                nodes: 9,
                edge_prob: 0.2,
            },
            SystemSpec::Dfs {
                nodes: 9,
                edge_prob: 0.2,
            },
        ] {
            let t = spec.generate(20, 1).unwrap();
            assert_eq!(t.n_features(), 27);
            for r in &t.trajectories {
                // One expansion per node; the last state has everything visited and no frontier.
                assert_eq!(r.len(), 9);
                for row in r.clone() {
                    let s = &t.states[row * 27..(row + 1) * 27];
                    assert_eq!(s[..9].iter().sum::<f32>(), 1.0, "one current node");
                    for i in 0..9 {
                        assert!(s[18 + i] <= s[9 + i], "frontier ⊆ visited");
                        assert!(s[i] <= s[9 + i], "current is visited");
                    }
                }
                let last = &t.states[(r.end - 1) * 27..r.end * 27];
                assert_eq!(last[9..18].iter().sum::<f32>(), 9.0);
                assert_eq!(last[18..].iter().sum::<f32>(), 0.0);
            }
        }
        // Same seed, same data; BFS and DFS differ.
        let b = SystemSpec::Bfs {
            nodes: 9,
            edge_prob: 0.3,
        }
        .generate(5, 7)
        .unwrap();
        assert_eq!(
            b,
            SystemSpec::Bfs {
                nodes: 9,
                edge_prob: 0.3
            }
            .generate(5, 7)
            .unwrap()
        );
        assert_ne!(
            b.states,
            SystemSpec::Dfs {
                nodes: 9,
                edge_prob: 0.3
            }
            .generate(5, 7)
            .unwrap()
            .states
        );
    }

    #[test]
    fn stack_states_have_one_pc_and_one_value_per_occupied_slot() {
        let spec = SystemSpec::StackMachine {
            program_len: 6,
            depth: 3,
            values: 4,
        };
        let t = spec.generate(30, 2).unwrap();
        assert_eq!(t.n_features(), 6 + 12);
        let mut deepest = 0;
        for row in 0..t.rows() {
            let s = &t.states[row * 18..(row + 1) * 18];
            assert_eq!(s[..6].iter().sum::<f32>(), 1.0);
            let occupied: Vec<f32> = (0..3)
                .map(|d| s[6 + 4 * d..10 + 4 * d].iter().sum())
                .collect();
            assert!(occupied.iter().all(|&o| o <= 1.0));
            assert!(
                occupied.windows(2).all(|w| w[0] >= w[1]),
                "slots fill from the bottom"
            );
            deepest = deepest.max(occupied.iter().filter(|&&o| o == 1.0).count());
        }
        assert!(deepest >= 2, "programs do use the stack");
    }
}
