//! Several workers, one backend each (one per GPU, or several on the CPU), embedding records
//! side by side. Idle workers take the next record from one queue, so work spreads by bases,
//! not by count; results are written in input order as soon as they are next in line, and at
//! most a few records per worker wait in memory.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

use crate::backend::Backend;
use crate::embed::{Embedder, Feature, Strand};
use crate::model::Model;
use crate::sinks::Mean;

/// Mean-pooled rows of every record that `feed` produces, computed by `workers` workers whose
/// backends `make(worker)` builds inside their threads; `emit(id, length, row)` is called in
/// input order. The first failure (a record, a device) stops the run and is returned.
#[allow(clippy::too_many_arguments)]
pub fn pooled_means<B: Backend>(
    make: &(dyn Fn(usize) -> Result<B> + Sync),
    workers: usize,
    model: &Arc<Model>,
    strand: Strand,
    context: usize,
    overlap: usize,
    feed: &mut dyn FnMut(&mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()>,
    emit: &mut dyn FnMut(&str, usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let workers = workers.max(1);
    let (job_tx, job_rx) = sync_channel::<(usize, String, Vec<u8>)>(2 * workers);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = channel::<(usize, String, usize, Result<Vec<f32>>)>();
    std::thread::scope(|scope| -> Result<()> {
        for w in 0..workers {
            let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
            scope.spawn(move || {
                let run = |emb: &mut Embedder<B>, tokens: &[u8]| -> Result<Vec<f32>> {
                    let mut m = Mean::new(emb.width());
                    emb.record(tokens, &mut m, &mut |_| {})?;
                    Ok(m.finish(tokens.len()).collect())
                };
                let mut emb = make(w).and_then(|b| Embedder::new(b, model.clone(), strand, Feature::Hidden, context, overlap));
                loop {
                    let job = job_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                    let Ok((seq, id, tokens)) = job else { return };
                    let row = match &mut emb {
                        Ok(emb) => run(emb, &tokens).map_err(|e| anyhow!("worker {w}: {e:#}")),
                        Err(e) => Err(anyhow!("worker {w}: {e:#}")),
                    };
                    let failed = row.is_err();
                    if res_tx.send((seq, id, tokens.len(), row)).is_err() || failed {
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
        let fed = feed(&mut |id, tokens| {
            job_tx.send((seq, id.to_string(), tokens.to_vec())).map_err(|_| anyhow!("all workers stopped"))?;
            seq += 1;
            // write what is ready while reading on, so finished rows do not pile up
            while let Ok(r) = res_rx.try_recv() {
                order.take(r, emit)?;
            }
            Ok(())
        });
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
