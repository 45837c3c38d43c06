//! The one policy by which records are packed into contexts, for every command that runs many
//! records: `embed` and `classify` (records streamed from the input), the workers of
//! `--workers` (jobs of records), `train` (a split in memory) and the embedder's batched sums
//! under `score-variants` and the rest.
//!
//! Records of at most `limit` bases go several to a context of at most `max_bases` bases (a
//! group holds at least one); any other record runs alone. Input order is kept: a record that
//! runs alone first closes the pending group, so groups and lone records come out in the order
//! their records went in.

use std::ops::Range;

use anyhow::Result;

/// Which records pack, and how many bases a packed context may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Longest record that packs (None: none does, every record runs alone).
    pub limit: Option<usize>,
    /// Bases per packed context; a single record longer than this still makes a group of one.
    pub max_bases: usize,
}

impl Policy {
    /// Every record alone.
    pub const ALONE: Policy = Policy { limit: None, max_bases: 0 };

    pub fn packs(&self, len: usize) -> bool {
        self.limit.is_some_and(|l| len <= l)
    }
}

/// What the batcher hands on: a packed group (one or more records) or a record that runs alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Group<T> {
    Packed(Vec<T>),
    Alone(T),
}

impl<T> Group<T> {
    /// The group's records in order (a lone record as a group of one).
    pub fn into_records(self) -> Vec<T> {
        match self {
            Group::Packed(v) => v,
            Group::Alone(r) => vec![r],
        }
    }
}

/// The streaming form: records arrive one at a time with their lengths.
pub struct Batcher<T> {
    policy: Policy,
    pending: Vec<T>,
    bases: usize,
}

impl<T> Batcher<T> {
    pub fn new(policy: Policy) -> Self {
        Batcher { policy, pending: Vec::new(), bases: 0 }
    }

    /// Whether a record of `len` bases would be packed. A caller that runs lone records from
    /// borrowed data (a chromosome is not copied) asks this, and for a lone record calls
    /// `flush` and runs it itself, as `push` would hand it on.
    pub fn packs(&self, len: usize) -> bool {
        self.policy.packs(len)
    }

    /// Take one record of `len` bases; `emit` gets every group this completes, in order.
    pub fn push(&mut self, item: T, len: usize, emit: &mut dyn FnMut(Group<T>) -> Result<()>) -> Result<()> {
        if !self.policy.packs(len) {
            self.flush(emit)?;
            return emit(Group::Alone(item));
        }
        if self.bases + len > self.policy.max_bases {
            self.flush(emit)?;
        }
        self.pending.push(item);
        self.bases += len;
        Ok(())
    }

    /// Hand on the pending group, if any (at the end of the input, or before an error is
    /// reported, so that records read before it are still computed).
    pub fn flush(&mut self, emit: &mut dyn FnMut(Group<T>) -> Result<()>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.bases = 0;
        emit(Group::Packed(std::mem::take(&mut self.pending)))
    }
}

/// The slice form: the groups of records `0..lens.len()` as index ranges, each with whether
/// it is packed (`false`: one record that runs alone). The same grouping as `Batcher`.
pub fn ranges(lens: &[usize], policy: Policy) -> Vec<(Range<usize>, bool)> {
    let mut out = Vec::new();
    let mut b = Batcher::new(policy);
    let mut emit = |g: Group<usize>| -> Result<()> {
        out.push(match g {
            Group::Packed(v) => (v[0]..v[v.len() - 1] + 1, true),
            Group::Alone(i) => (i..i + 1, false),
        });
        Ok(())
    };
    for (i, &n) in lens.iter().enumerate() {
        b.push(i, n, &mut emit).expect("collecting ranges cannot fail");
    }
    b.flush(&mut emit).expect("collecting ranges cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(lens: &[usize], policy: Policy) -> Vec<Group<usize>> {
        let mut out = Vec::new();
        let mut b = Batcher::new(policy);
        for (i, &n) in lens.iter().enumerate() {
            b.push(i, n, &mut |g| {
                out.push(g);
                Ok(())
            })
            .unwrap();
        }
        b.flush(&mut |g| {
            out.push(g);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn short_records_pack_up_to_the_budget_and_long_ones_run_alone_in_order() {
        let p = Policy { limit: Some(200), max_bases: 250 };
        // 100 + 100 fit, + 60 would not; 60 + 150 fit; 500 is over the limit
        let lens = [100, 100, 60, 150, 500, 30, 100, 100];
        assert_eq!(
            groups(&lens, p),
            vec![Group::Packed(vec![0, 1]), Group::Packed(vec![2, 3]), Group::Alone(4), Group::Packed(vec![5, 6, 7])]
        );
        assert_eq!(ranges(&lens, p), vec![(0..2, true), (2..4, true), (4..5, false), (5..8, true)]);
        // every record comes out exactly once, in input order
        let flat: Vec<usize> = groups(&lens, p)
            .into_iter()
            .flat_map(|g| match g {
                Group::Packed(v) => v,
                Group::Alone(i) => vec![i],
            })
            .collect();
        assert_eq!(flat, (0..lens.len()).collect::<Vec<_>>());
    }

    #[test]
    fn edge_budgets() {
        // a record exactly at the limit packs; one larger than the budget is still a group of one
        let p = Policy { limit: Some(10), max_bases: 5 };
        assert_eq!(groups(&[10, 3, 3], p), vec![Group::Packed(vec![0]), Group::Packed(vec![1]), Group::Packed(vec![2])]);
        assert_eq!(groups(&[2, 3, 1], p), vec![Group::Packed(vec![0, 1]), Group::Packed(vec![2])]);
        assert_eq!(groups(&[4, 7], Policy::ALONE), vec![Group::Alone(0), Group::Alone(1)]);
        assert!(groups(&[], p).is_empty());
        assert!(ranges(&[], p).is_empty());
    }

    #[test]
    fn an_emit_error_stops_and_is_returned() {
        let mut b = Batcher::new(Policy { limit: Some(10), max_bases: 10 });
        let mut fail = |_: Group<u8>| -> Result<()> { anyhow::bail!("disk full") };
        b.push(1, 6, &mut fail).unwrap();
        assert!(b.push(2, 6, &mut fail).unwrap_err().to_string().contains("disk full"));
    }
}
