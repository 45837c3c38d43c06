//! `config.json` of a Caduceus checkpoint (`CaduceusConfig`), validated.
//!
//! Only fields that change the forward pass are interpreted; init-only fields (`dt_min`,
//! `initializer_cfg`, ...) are accepted and ignored. Any option value we cannot compute
//! exactly is refused here, before a single weight is read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
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

/// Upper limits on the sizes config.json may state, checked before anything is allocated:
/// far above any released checkpoint (d_model 2560, 64 layers, vocabulary 50280), low enough
/// that every derived size is computed without overflow. Whether the sizes are the file's is
/// checked against the tensor shapes of model.safetensors (`weights`).
const MAX_D_MODEL: u64 = 1 << 20;
const MAX_LAYERS: u64 = 1 << 16;
const MAX_VOCAB: u64 = 1 << 24;
/// ssm_cfg sizes (d_state, d_conv, expand, dt_rank).
const MAX_SSM: u64 = 1 << 16;

/// The top-level fields of config.json, read one by one so that every error names its field.
struct Fields(serde_json::Map<String, Value>);

impl Fields {
    /// A field's value; `null` counts as absent (transformers writes unset options as null).
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ModelError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| ModelError::Config(format!("{key}: {e}"))),
        }
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// A size in 1..=max (`default` when absent; `None`: the field is required).
    fn size(&self, key: &str, max: u64, default: Option<usize>) -> Result<usize, ModelError> {
        match self.0.get(key) {
            None | Some(Value::Null) => default.ok_or_else(|| ModelError::Config(format!("{key} is missing"))),
            Some(v) => size_value(key, v, 1, max),
        }
    }
}

/// A JSON integer in min..=max, or an error naming `key`.
fn size_value(key: &str, v: &Value, min: u64, max: u64) -> Result<usize, ModelError> {
    v.as_u64()
        .filter(|n| (min..=max).contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| ModelError::Config(format!("{key} must be an integer from {min} to {max}, found {v}")))
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
        let raw = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Fields(map),
            Ok(_) => return Err(bad("not a JSON object".into())),
            // also numbers beyond f64 (1e999): JSON has no infinities, serde_json refuses them
            Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
        };
        if let Some(t) = raw.get::<String>("model_type")? {
            if t != "caduceus" {
                return Err(bad(format!(
                    "model_type \"{t}\" is not supported (expected \"caduceus\")"
                )));
            }
        }
        if !raw.flag("rms_norm", true)? {
            return Err(bad("rms_norm=false (LayerNorm) is not supported".into()));
        }
        if raw.get::<u64>("d_intermediate")?.unwrap_or(0) != 0 {
            return Err(bad("d_intermediate > 0 (gated MLP blocks) is not supported".into()));
        }
        let bidirectional = raw.flag("bidirectional", true)?;
        if bidirectional {
            match raw.get::<String>("bidirectional_strategy")?.as_deref() {
                Some("add") | None => {}
                Some(s) => {
                    return Err(bad(format!(
                        "bidirectional_strategy \"{s}\" is not supported (only \"add\")"
                    )))
                }
            }
        }
        // RMSNorm divides by sqrt(mean(v²) + eps): a negative eps takes the root of a negative
        // number for every row with mean(v²) < -eps (all-NaN output), zero divides an all-zero
        // row by zero; the forward pass computes with eps as an f32, so it must be one.
        let eps32 = match raw.0.get("norm_epsilon") {
            None | Some(Value::Null) => 1e-5,
            Some(v) => v
                .as_f64()
                .map(|e| e as f32)
                .filter(|e| *e > 0.0 && e.is_finite())
                .ok_or_else(|| {
                    bad(format!("norm_epsilon must be a positive number that f32 can hold (1e-5 in released models), found {v}"))
                })?,
        };
        let mut cfg = Config {
            d_model: raw.size("d_model", MAX_D_MODEL, None)?,
            n_layer: raw.size("n_layer", MAX_LAYERS, None)?,
            vocab_size: raw.size("vocab_size", MAX_VOCAB, None)?,
            // 0 means no padding, as 1 does
            pad_vocab_size_multiple: match raw.0.get("pad_vocab_size_multiple") {
                None | Some(Value::Null) => 8,
                Some(v) => size_value("pad_vocab_size_multiple", v, 0, MAX_VOCAB)?,
            },
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: None,
            norm_epsilon: eps32,
            fused_add_norm: raw.flag("fused_add_norm", true)?,
            bidirectional,
            weight_tie: raw.flag("bidirectional_weight_tie", true)?,
            rcps: raw.flag("rcps", false)?,
            complement_map: None,
            model_max_length: None,
        };
        for (key, v) in raw.get::<BTreeMap<String, Value>>("ssm_cfg")?.unwrap_or_default() {
            let as_usize = |v: &Value| size_value(&format!("ssm_cfg.{key}"), v, 1, MAX_SSM);
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
        if let Some(map) = raw.get::<BTreeMap<String, usize>>("complement_map")? {
            // every id needs an entry; checked first so that the buffer is the map's size
            if map.len() < cfg.vocab_size {
                return Err(bad(format!(
                    "complement_map has {} entries, fewer than vocab_size ({})",
                    map.len(),
                    cfg.vocab_size
                )));
            }
            // transformers writes keys sorted as strings ("0","1","10",...): order by integer.
            let mut m = vec![usize::MAX; map.len()];
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
