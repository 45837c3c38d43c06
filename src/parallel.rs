//! Several workers, one backend each (one per GPU, or several on the CPU), embedding records
//! side by side. Idle workers take the next record from one queue, so work spreads by bases,
//! not by count; results are written in input order as soon as they are next in line, and at
//! most a few jobs per worker wait in memory. Short records travel in batches of about
//! `pack_bases` bases, which a backend that packs runs as one context (`pooled_packed`).

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

use crate::backend::Backend;
use crate::batch::{Batcher, Group, Policy};
use crate::embed::{Embedder, Feature, Strand};
use crate::model::Model;
use crate::pool::ReadPool;

/// A job: consecutive records, the first with sequence number `.0`.
type Job = (usize, Vec<(String, Vec<u8>)>);

/// Mean-pooled rows of every record that `feed` produces, computed by `workers` workers whose
/// backends `make(worker)` builds inside their threads; `emit(id, length, row)` is called in
/// input order. Records of at most `context` bases go to the workers in batches of up to
/// `pack_bases` bases (0: one record per job). The first failure (a record, a device) stops
/// the run and is returned.
#[allow(clippy::too_many_arguments)]
pub fn pooled_means<B: Backend>(
    make: &(dyn Fn(usize) -> Result<B> + Sync),
    workers: usize,
    model: &Arc<Model>,
    strand: Strand,
    context: usize,
    overlap: usize,
    pack_bases: usize,
    feed: &mut dyn FnMut(&mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()>,
    emit: &mut dyn FnMut(&str, usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let workers = workers.max(1);
    let (job_tx, job_rx) = sync_channel::<Job>(2 * workers);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = channel::<(usize, String, usize, Result<Vec<f32>>)>();
    std::thread::scope(|scope| -> Result<()> {
        for w in 0..workers {
            let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
            scope.spawn(move || {
                let run = |emb: &mut Embedder<B>, batch: &[(String, Vec<u8>)]| -> Result<Vec<Vec<f32>>> {
                    if batch.len() > 1 {
                        let refs: Vec<&[u8]> = batch.iter().map(|(_, t)| t.as_slice()).collect();
                        let sums = emb.pooled_packed(&refs, pack_bases)?;
                        return Ok(sums.iter().zip(batch).map(|(sum, (_, t))| ReadPool::mean_of(sum, t.len())).collect());
                    }
                    let tokens = &batch[0].1;
                    let mut m = ReadPool::mean(tokens.len(), emb.width());
                    emb.record(tokens, &mut m, &mut |_| {})?;
                    Ok(vec![m.features()])
                };
                let mut emb = make(w).and_then(|b| Embedder::new(b, model.clone(), strand, Feature::Hidden, context, overlap));
                loop {
                    let job = job_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                    let Ok((first, batch)) = job else { return };
                    let rows = match &mut emb {
                        Ok(emb) => run(emb, &batch).map_err(|e| anyhow!("worker {w}: {e:#}")),
                        Err(e) => Err(anyhow!("worker {w}: {e:#}")),
                    };
                    let results: Vec<_> = match rows {
                        Ok(rows) => batch.into_iter().zip(rows).enumerate().map(|(k, ((id, t), row))| (first + k, id, t.len(), Ok(row))).collect(),
                        Err(e) => vec![(first, batch.into_iter().next().map(|(id, _)| id).unwrap_or_default(), 0, Err(e))],
                    };
                    let failed = results.iter().any(|r| r.3.is_err());
                    for r in results {
                        if res_tx.send(r).is_err() {
                            return;
                        }
                    }
                    if failed {
                        return;
                    }
                }
            });
        }
        // only the workers hold the queue's receiving end: if they all stop, sending fails
        drop(job_rx);
        drop(res_tx);
        let mut order = Order { next: 0, pending: BTreeMap::new() };
        let mut seq = 0;
        let policy = if pack_bases > 0 { Policy { limit: Some(context), max_bases: pack_bases } } else { Policy::ALONE };
        // records tagged with their input index; a job is a group, led by its first index
        let mut batcher = Batcher::<(usize, String, Vec<u8>)>::new(policy);
        let fed = (|| -> Result<()> {
            let mut send = |g: Group<(usize, String, Vec<u8>)>| -> Result<()> {
                let recs = g.into_records();
                let job = (recs[0].0, recs.into_iter().map(|(_, id, t)| (id, t)).collect());
                job_tx.send(job).map_err(|_| anyhow!("all workers stopped"))
            };
            let fed = feed(&mut |id, tokens| {
                batcher.push((seq, id.to_string(), tokens.to_vec()), tokens.len(), &mut send)?;
                seq += 1;
                // write what is ready while reading on, so finished rows do not pile up
                while let Ok(r) = res_rx.try_recv() {
                    order.take(r, emit)?;
                }
                Ok(())
            });
            // records read before an input error are still computed and written
            let sent = batcher.flush(&mut send);
            fed.and(sent)
        })();
        drop(job_tx);
        // a failed worker stops the run; its error explains more than "all workers stopped"
        let mut first_err = None;
        for r in res_rx.iter() {
            if let Err(e) = order.take(r, emit) {
                first_err.get_or_insert(e);
                break;
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        fed?;
        anyhow::ensure!(order.next == seq, "{} of {seq} records were not computed", seq - order.next);
        Ok(())
    })
}

/// Reorders results into input order.
struct Order {
    next: usize,
    pending: BTreeMap<usize, (String, usize, Vec<f32>)>,
}

impl Order {
    fn take(&mut self, (seq, id, len, row): (usize, String, usize, Result<Vec<f32>>), emit: &mut dyn FnMut(&str, usize, &[f32]) -> Result<()>) -> Result<()> {
        self.pending.insert(seq, (id, len, row?));
        while let Some((id, len, row)) = self.pending.remove(&self.next) {
            emit(&id, len, &row)?;
            self.next += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    /// Batched jobs (short records packed per job, long ones alone) give the rows of one
    /// record per job, in input order, for any number of workers.
    #[test]
    fn batched_jobs_match_one_record_per_job() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ph");
        let model = Arc::new(Model::load(&dir).unwrap());
        let mut s = 12345u64;
        let recs: Vec<(String, Vec<u8>)> = [150usize, 1, 151, 90, 700, 150, 3, 150, 2000, 150, 149, 1, 64]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let t = (0..n)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        crate::tokenizer::ACGT[(s >> 40) as usize % 4]
                    })
                    .collect();
                (format!("r{i}"), t)
            })
            .collect();
        let make = |_: usize| -> Result<Cpu> { Ok(Cpu::new(model.clone())) };
        let run = |workers: usize, pack: usize| -> Vec<(String, usize, Vec<f32>)> {
            let mut out = Vec::new();
            let mut feed = |send: &mut dyn FnMut(&str, &[u8]) -> Result<()>| -> Result<()> {
                for (id, t) in &recs {
                    send(id, t)?;
                }
                Ok(())
            };
            let mut emit = |id: &str, len: usize, row: &[f32]| -> Result<()> {
                out.push((id.to_string(), len, row.to_vec()));
                Ok(())
            };
            // context 1024: the 2,000-base record is tiled and goes alone
            pooled_means(&make, workers, &model, Strand::Both, 1024, 256, pack, &mut feed, &mut emit).unwrap();
            out
        };
        // an input error part-way: the records read before it are still emitted, in order
        for (workers, pack) in [(1, 0), (2, 400), (1, 100_000)] {
            let mut out = Vec::new();
            let mut feed = |send: &mut dyn FnMut(&str, &[u8]) -> Result<()>| -> Result<()> {
                for (id, t) in &recs[..5] {
                    send(id, t)?;
                }
                anyhow::bail!("bad record 6")
            };
            let mut emit = |id: &str, _: usize, _: &[f32]| -> Result<()> {
                out.push(id.to_string());
                Ok(())
            };
            let r = pooled_means(&make, workers, &model, Strand::Both, 1024, 256, pack, &mut feed, &mut emit);
            assert!(r.unwrap_err().to_string().contains("bad record 6"));
            assert_eq!(out, ["r0", "r1", "r2", "r3", "r4"], "workers {workers} pack {pack}");
        }
        let want = run(1, 0);
        assert_eq!(want.len(), recs.len());
        assert!(want.iter().zip(&recs).all(|(w, r)| w.0 == r.0 && w.1 == r.1.len()));
        for (workers, pack) in [(1, 400), (2, 400), (3, 1), (2, 100_000)] {
            let got = run(workers, pack);
            assert_eq!(got.len(), want.len(), "workers {workers} pack {pack}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((&g.0, g.1), (&w.0, w.1), "workers {workers} pack {pack}: order");
                let err = g.2.iter().zip(&w.2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err <= 1e-5, "workers {workers} pack {pack} {}: {err}", g.0);
            }
        }
    }
}
