//! `config.json` of a Caduceus checkpoint (`CaduceusConfig`), validated.
//!
//! Only fields that change the forward pass are interpreted; init-only fields (`dt_min`,
//! `initializer_cfg`, ...) are accepted and ignored. Any option value we cannot compute
//! exactly is refused here, before a single weight is read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ModelError;

/// What a checkpoint's config.json says, with derived sizes as methods.
#[derive(Clone, Debug)]
pub struct Config {
    pub d_model: usize,
    pub n_layer: usize,
    pub vocab_size: usize,
    pub pad_vocab_size_multiple: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub expand: usize,
    dt_rank: Option<usize>,
    pub norm_epsilon: f32,
    pub fused_add_norm: bool,
    pub bidirectional: bool,
    pub weight_tie: bool,
    pub rcps: bool,
    /// token id -> complement id, from config (the safetensors buffer wins when present).
    pub complement_map: Option<Vec<usize>>,
    /// `model_max_length` of a tokenizer_config.json beside config.json, if any.
    pub model_max_length: Option<usize>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    d_model: usize,
    n_layer: usize,
    vocab_size: usize,
    #[serde(default = "default_pad")]
    pad_vocab_size_multiple: usize,
    #[serde(default)]
    ssm_cfg: Option<BTreeMap<String, Value>>,
    #[serde(default = "yes")]
    rms_norm: bool,
    #[serde(default = "default_eps")]
    norm_epsilon: f64,
    #[serde(default = "yes")]
    fused_add_norm: bool,
    #[serde(default = "yes")]
    bidirectional: bool,
    #[serde(default = "default_strategy")]
    bidirectional_strategy: Option<String>,
    #[serde(default = "yes")]
    bidirectional_weight_tie: bool,
    #[serde(default)]
    rcps: bool,
    #[serde(default)]
    complement_map: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    d_intermediate: usize,
}

fn yes() -> bool {
    true
}
fn default_pad() -> usize {
    8
}
fn default_eps() -> f64 {
    1e-5
}
fn default_strategy() -> Option<String> {
    Some("add".into())
}

/// `ssm_cfg` keys that only matter at initialisation or for the fused kernel choice.
const SSM_IGNORED: &[&str] = &[
    "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path", "layer_idx",
];

impl Config {
    pub fn d_inner(&self) -> usize {
        self.expand * self.d_model
    }
    pub fn dt_rank(&self) -> usize {
        self.dt_rank.unwrap_or(self.d_model.div_ceil(16))
    }
    /// Rows of the embedding matrix: vocab padded up to the multiple (the file stores it padded).
    pub fn vocab_padded(&self) -> usize {
        let m = self.pad_vocab_size_multiple.max(1);
        self.vocab_size.div_ceil(m) * m
    }
    /// Width of the final hidden state as the public model returns it.
    pub fn hidden_width(&self) -> usize {
        if self.rcps { 2 * self.d_model } else { self.d_model }
    }

    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ModelError::Io { path: path.clone(), err: e })?;
        let mut cfg = Self::from_json(&text).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        let tok = dir.join("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&tok) {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Config(format!("{}: {e}", tok.display())))?;
            cfg.model_max_length = v
                .get("model_max_length")
                .and_then(Value::as_u64)
                .filter(|&n| n > 0 && n < (1 << 40))
                .map(|n| n as usize);
        }
        Ok(cfg)
    }

    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let bad = |m: String| ModelError::Config(m);
        let raw: Raw = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &raw.model_type {
            if t != "caduceus" {
                return Err(bad(format!(
                    "model_type \"{t}\" is not supported (expected \"caduceus\")"
                )));
            }
        }
        if !raw.rms_norm {
            return Err(bad("rms_norm=false (LayerNorm) is not supported".into()));
        }
        if raw.d_intermediate != 0 {
            return Err(bad("d_intermediate > 0 (gated MLP blocks) is not supported".into()));
        }
        if raw.bidirectional {
            match raw.bidirectional_strategy.as_deref() {
                Some("add") | None => {}
                Some(s) => {
                    return Err(bad(format!(
                        "bidirectional_strategy \"{s}\" is not supported (only \"add\")"
                    )))
                }
            }
        }
        if raw.d_model == 0 || raw.n_layer == 0 || raw.vocab_size == 0 {
            return Err(bad("d_model, n_layer and vocab_size must be positive".into()));
        }
        let mut cfg = Config {
            d_model: raw.d_model,
            n_layer: raw.n_layer,
            vocab_size: raw.vocab_size,
            pad_vocab_size_multiple: raw.pad_vocab_size_multiple,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            norm_epsilon: raw.norm_epsilon as f32,
            fused_add_norm: raw.fused_add_norm,
            bidirectional: raw.bidirectional,
            weight_tie: raw.bidirectional_weight_tie,
            rcps: raw.rcps,
            complement_map: None,
            model_max_length: None,
        };
        for (key, v) in raw.ssm_cfg.unwrap_or_default() {
            let as_usize = |v: &Value| {
                v.as_u64()
                    .filter(|&n| n > 0 && n < 1 << 20)
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(format!("ssm_cfg.{key} must be a positive integer, found {v}")))
            };
            match key.as_str() {
                "d_state" => cfg.d_state = as_usize(&v)?,
                "d_conv" => cfg.d_conv = as_usize(&v)?,
                "expand" => cfg.expand = as_usize(&v)?,
                "dt_rank" => {
                    cfg.dt_rank = if v.as_str() == Some("auto") { None } else { Some(as_usize(&v)?) }
                }
                "conv_bias" => {
                    if v.as_bool() != Some(true) {
                        return Err(bad(format!("ssm_cfg.conv_bias={v} is not supported (only true)")));
                    }
                }
                "bias" => {
                    if v.as_bool() != Some(false) {
                        return Err(bad(format!("ssm_cfg.bias={v} is not supported (only false)")));
                    }
                }
                "layer" => {
                    if v.as_str() != Some("Mamba1") {
                        return Err(bad(format!("ssm_cfg.layer={v} is not supported (only Mamba1)")));
                    }
                }
                k if SSM_IGNORED.contains(&k) => {}
                k => return Err(bad(format!("unknown ssm_cfg option \"{k}\""))),
            }
        }
        if let Some(map) = raw.complement_map {
            // transformers writes keys sorted as strings ("0","1","10",...): order by integer.
            let mut m = vec![usize::MAX; cfg.vocab_size.max(map.len())];
            for (k, v) in map {
                let i: usize = k
                    .parse()
                    .map_err(|_| bad(format!("complement_map key \"{k}\" is not an integer")))?;
                if i >= m.len() {
                    return Err(bad(format!("complement_map key {i} is outside the vocabulary")));
                }
                m[i] = v;
            }
            if let Some(i) = m.iter().position(|&v| v == usize::MAX) {
                return Err(bad(format!("complement_map has no entry for id {i}")));
            }
            cfg.complement_map = Some(m);
        }
        Ok(cfg)
    }

    /// One line for `info` and logs.
    pub fn describe(&self) -> String {
        let kind = match (self.bidirectional, self.rcps) {
            (true, true) => "Caduceus-PS (bidirectional Mamba-1, RC-equivariant)",
            (true, false) => "Caduceus-Ph (bidirectional Mamba-1)",
            (false, true) => "causal Mamba-1 with RCPS",
            (false, false) => "causal Mamba-1",
        };
        format!(
            "{kind}: d_model {}, n_layer {}, d_inner {}, d_state {}, d_conv {}, dt_rank {}, vocab {}",
            self.d_model,
            self.n_layer,
            self.d_inner(),
            self.d_state,
            self.d_conv,
            self.dt_rank(),
            self.vocab_padded()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_options() {
        let base = r#"{"d_model":16,"n_layer":1,"vocab_size":16"#;
        assert!(Config::from_json(&format!("{base}}}")).is_ok());
        for extra in [
            r#","model_type":"llama""#,
            r#","bidirectional_strategy":"ew_multiply""#,
            r#","rms_norm":false"#,
            r#","ssm_cfg":{"layer":"Mamba2"}"#,
            r#","ssm_cfg":{"frobnicate":1}"#,
            r#","ssm_cfg":{"bias":true}"#,
        ] {
            let e = Config::from_json(&format!("{base}{extra}}}")).unwrap_err();
            assert!(matches!(e, ModelError::Config(_)), "{extra}: {e}");
        }
    }

    #[test]
    fn derived_sizes() {
        let c = Config::from_json(r#"{"d_model":118,"n_layer":4,"vocab_size":12}"#).unwrap();
        assert_eq!((c.d_inner(), c.dt_rank(), c.vocab_padded()), (236, 8, 16));
    }

    #[test]
    fn complement_map_ordered_by_integer_key() {
        let c = Config::from_json(
            r#"{"d_model":16,"n_layer":1,"vocab_size":3,"complement_map":{"0":0,"10":1,"2":2,"1":10}}"#,
        );
        // key 10 is outside a 3-entry vocab padded to 4 ids: refused, not silently dropped
        assert!(c.is_err());
        let c = Config::from_json(
            r#"{"d_model":16,"n_layer":1,"vocab_size":3,"complement_map":{"0":0,"2":1,"1":2}}"#,
        )
        .unwrap();
        assert_eq!(c.complement_map.unwrap(), vec![0, 2, 1]);
    }
}
