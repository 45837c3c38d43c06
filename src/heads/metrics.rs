//! Held-out scores: accuracy, macro F1, Matthews correlation (multi-class form of Gorodkin
//! 2004, which is the usual MCC for two classes) and AUROC (one-vs-rest, macro-averaged over
//! the classes that have both positives and negatives; for two classes that is the AUROC).

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Scores {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub mcc: f64,
    /// None when no class has both positives and negatives.
    pub auroc: Option<f64>,
    /// Rows: true label; columns: predicted label.
    pub confusion: Vec<Vec<usize>>,
}

/// Index of the largest probability (the first on ties).
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// The lowest probability threshold at which the calls whose top probability reaches it are
/// at least `precision` correct (the most calls at that precision), with the share of rows
/// called there: `(threshold, precision reached, coverage)`. None when no threshold gets there.
pub fn call_threshold(probs: &[f32], y: &[u32], c: usize, precision: f64) -> Option<(f32, f64, f64)> {
    let n = y.len();
    assert_eq!(probs.len(), n * c);
    let mut top: Vec<(f32, bool)> = (0..n)
        .map(|i| {
            let p = &probs[i * c..(i + 1) * c];
            let k = argmax(p);
            (p[k], k == y[i] as usize)
        })
        .collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut right, mut best) = (0usize, None);
    let mut i = 0;
    while i < n {
        // rows with equal top probability are called together
        let mut j = i;
        while j < n && top[j].0 == top[i].0 {
            right += top[j].1 as usize;
            j += 1;
        }
        let reached = right as f64 / j as f64;
        if reached >= precision {
            best = Some((top[i].0, reached, j as f64 / n as f64));
        }
        i = j;
    }
    best
}

/// Scores of probabilities `probs` (N×C, row-major) against labels `y`.
pub fn score(probs: &[f32], y: &[u32], c: usize) -> Scores {
    let n = y.len();
    assert_eq!(probs.len(), n * c);
    let mut confusion = vec![vec![0usize; c]; c];
    for (i, &t) in y.iter().enumerate() {
        confusion[t as usize][argmax(&probs[i * c..(i + 1) * c])] += 1;
    }
    let correct: usize = (0..c).map(|k| confusion[k][k]).sum();
    let truth: Vec<usize> = (0..c).map(|k| confusion[k].iter().sum()).collect();
    let pred: Vec<usize> = (0..c).map(|k| (0..c).map(|t| confusion[t][k]).sum()).collect();
    // macro F1 over the labels that occur in truth or prediction
    let f1s: Vec<f64> = (0..c)
        .filter(|&k| truth[k] + pred[k] > 0)
        .map(|k| 2.0 * confusion[k][k] as f64 / (truth[k] + pred[k]) as f64)
        .collect();
    let macro_f1 = if f1s.is_empty() { 0.0 } else { f1s.iter().sum::<f64>() / f1s.len() as f64 };
    let (s, cc) = (n as f64, correct as f64);
    let pt: f64 = (0..c).map(|k| pred[k] as f64 * truth[k] as f64).sum();
    let pp: f64 = pred.iter().map(|v| (*v as f64).powi(2)).sum();
    let tt: f64 = truth.iter().map(|v| (*v as f64).powi(2)).sum();
    let den = ((s * s - pp) * (s * s - tt)).sqrt();
    let mcc = if den > 0.0 { (cc * s - pt) / den } else { 0.0 };
    let aucs: Vec<f64> = (0..c)
        .filter_map(|k| {
            let scores: Vec<f32> = (0..n).map(|i| probs[i * c + k]).collect();
            let pos: Vec<bool> = y.iter().map(|&t| t as usize == k).collect();
            auroc(&scores, &pos)
        })
        .collect();
    let auroc = if aucs.is_empty() { None } else { Some(aucs.iter().sum::<f64>() / aucs.len() as f64) };
    Scores { n, accuracy: if n > 0 { cc / s } else { 0.0 }, macro_f1, mcc, auroc, confusion }
}

/// Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, ties counted half.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let np = positive.iter().filter(|p| **p).count();
    let nn = positive.len() - np;
    if np == 0 || nn == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0; // 1-based average rank of the tie group
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum += mid;
            }
        }
        i = j + 1;
    }
    Some((rank_sum - np as f64 * (np as f64 + 1.0) / 2.0) / (np as f64 * nn as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_case_by_hand() {
        // truth 1,1,1,0,0 ; p(1) .9 .6 .4 .3 .7 -> predicted 1,1,0,0,1
        let p1 = [0.9f32, 0.6, 0.4, 0.3, 0.7];
        let probs: Vec<f32> = p1.iter().flat_map(|p| [1.0 - p, *p]).collect();
        let s = score(&probs, &[1, 1, 1, 0, 0], 2);
        assert_eq!(s.confusion, vec![vec![1, 1], vec![1, 2]]);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        // F1(1) = 2·2/(3+3) = 2/3, F1(0) = 2·1/(2+2) = 1/2
        assert!((s.macro_f1 - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        // MCC = (TP·TN − FP·FN)/sqrt(...) = (2·1 − 1·1)/sqrt(3·3·2·2) = 1/6
        assert!((s.mcc - 1.0 / 6.0).abs() < 1e-12);
        // positives .9 .6 .4 vs negatives .3 .7: pairs won 2 + 1 + 1 = 4 of 6
        assert!((s.auroc.unwrap() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn ties_and_degenerate_cases() {
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        let s = score(&[1.0, 0.0, 1.0, 0.0], &[0, 0], 2);
        assert_eq!(s.accuracy, 1.0);
        assert_eq!(s.mcc, 0.0);
        assert_eq!(s.auroc, None);
    }

    #[test]
    fn three_classes() {
        // perfect predictions: every score 1
        let probs = [0.8f32, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.8];
        let s = score(&probs, &[0, 1, 2], 3);
        assert_eq!((s.accuracy, s.macro_f1, s.mcc, s.auroc), (1.0, 1.0, 1.0, Some(1.0)));
        // Gorodkin's R_K on a hand-checked confusion [[2,1,0],[0,1,1],[0,0,1]]
        let rows = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)];
        let mut probs = Vec::new();
        let mut y = Vec::new();
        for (t, p) in rows {
            let mut v = [0.0f32; 3];
            v[p] = 1.0;
            probs.extend(v);
            y.push(t as u32);
        }
        let s = score(&probs, &y, 3);
        // c=4, s=6, p=(2,2,2), t=(3,2,1): (4·6 − (6+4+2)) / sqrt((36−12)(36−14)) = 12/sqrt(528)
        assert!((s.mcc - 12.0 / 528f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn call_threshold_by_hand() {
        // top probabilities .9 (right) .8 (right) .7 (wrong) .6 (right) .55 (wrong)
        let probs = [0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.4, 0.6, 0.55, 0.45];
        let y = [0, 1, 1, 1, 1];
        // at >= .6: 3 of 4 right (.75); at >= .8: 2 of 2; at >= .55: 3 of 5
        assert_eq!(call_threshold(&probs, &y, 2, 0.75), Some((0.6, 0.75, 0.8)));
        assert_eq!(call_threshold(&probs, &y, 2, 0.9), Some((0.8, 1.0, 0.4)));
        assert_eq!(call_threshold(&probs, &y, 2, 0.5), Some((0.55, 0.6, 1.0)));
        assert_eq!(call_threshold(&[0.9, 0.1], &[1], 2, 0.9), None);
    }
}
