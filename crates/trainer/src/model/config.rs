//! Architectures: the ViT of workload W1 and the byte-level GPT of workload W2
//! (`../shared/docs/WORKLOADS.md`), and [`ModelConfig`], the one a run uses.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Architecture of the ViT. [`VitConfig::w1`] is workload W1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Input channels.
    pub channels: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Side of the square patches.
    pub patch: usize,
    /// Model width d.
    pub dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block (must divide `dim`).
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
    /// Number of classes.
    pub classes: usize,
    /// LayerNorm ε.
    pub ln_eps: f64,
}

impl VitConfig {
    /// W1: 8×8 digits, 2×2 patches, d = 64, 4 blocks, 4 heads, MLP 128, 10 classes, ε = 1e-5.
    pub fn w1() -> Self {
        Self {
            channels: 1,
            height: 8,
            width: 8,
            patch: 2,
            dim: 64,
            depth: 4,
            heads: 4,
            mlp_dim: 128,
            classes: 10,
            ln_eps: 1e-5,
        }
    }

    /// Tokens per sequence: the patches plus the CLS token.
    pub fn tokens(&self) -> usize {
        (self.height / self.patch) * (self.width / self.patch) + 1
    }

    /// Values per patch: `channels · patch²`.
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    /// Width of one head, `d / heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads.max(1)
    }

    /// Rejects impossible architectures, naming the offending command-line flag.
    pub fn validate(&self) -> Result<()> {
        if self.patch == 0 || self.height % self.patch != 0 || self.width % self.patch != 0 {
            return Err(TrainError::Config {
                flag: "--patch",
                msg: format!(
                    "patch size {} must be > 0 and divide the image size {}×{}",
                    self.patch, self.height, self.width
                ),
            });
        }
        if self.classes < 2 {
            return Err(TrainError::Config {
                flag: "--data",
                msg: format!("{} classes: a classifier needs at least 2", self.classes),
            });
        }
        validate_trunk(self.dim, self.depth, self.heads, self.mlp_dim, self.ln_eps)
    }
}

/// Architecture of the byte-level causal decoder. [`GptConfig::w2`] is workload W2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size (256: bytes).
    pub vocab: usize,
    /// Context length T: the longest input sequence and the number of position embeddings.
    pub context: usize,
    /// Model width d.
    pub dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block (must divide `dim`).
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
    /// LayerNorm ε.
    pub ln_eps: f64,
}

impl GptConfig {
    /// W2: bytes, context 256, d = 256, 8 heads, 6 blocks, MLP 1024, ε = 1e-5.
    pub fn w2() -> Self {
        Self {
            vocab: 256,
            context: 256,
            dim: 256,
            depth: 6,
            heads: 8,
            mlp_dim: 1024,
            ln_eps: 1e-5,
        }
    }

    /// Rejects impossible architectures, naming the offending command-line flag.
    pub fn validate(&self) -> Result<()> {
        if self.context == 0 {
            return Err(TrainError::Config {
                flag: "--context",
                msg: "the context length must be at least 1".into(),
            });
        }
        if self.vocab < 2 {
            return Err(TrainError::Config {
                flag: "--model",
                msg: format!(
                    "vocabulary of {}: a language model needs at least 2 symbols",
                    self.vocab
                ),
            });
        }
        validate_trunk(self.dim, self.depth, self.heads, self.mlp_dim, self.ln_eps)
    }
}

fn validate_trunk(
    dim: usize,
    depth: usize,
    heads: usize,
    mlp_dim: usize,
    ln_eps: f64,
) -> Result<()> {
    let bad = |flag: &'static str, msg: String| Err(TrainError::Config { flag, msg });
    if dim == 0 || heads == 0 || dim % heads != 0 {
        return bad(
            "--heads",
            format!("{heads} heads must be > 0 and divide the model width {dim}"),
        );
    }
    if depth == 0 {
        return bad("--depth", "the depth must be at least 1".into());
    }
    if mlp_dim == 0 {
        return bad("--mlp-dim", "the MLP width must be at least 1".into());
    }
    if !(ln_eps > 0.0 && ln_eps.is_finite()) {
        return bad("--ln-eps", format!("LayerNorm ε = {ln_eps} must be > 0"));
    }
    Ok(())
}

/// The architecture of a run: a ViT classifier or a byte-level GPT.
///
/// Serialised with a `kind` tag (`"vit"` or `"gpt"`) beside the architecture's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    /// Pre-LN Vision Transformer with a CLS token (W1).
    Vit(VitConfig),
    /// Pre-LN causal decoder over bytes (W2).
    Gpt(GptConfig),
}

impl From<VitConfig> for ModelConfig {
    fn from(c: VitConfig) -> Self {
        Self::Vit(c)
    }
}

impl From<GptConfig> for ModelConfig {
    fn from(c: GptConfig) -> Self {
        Self::Gpt(c)
    }
}

impl ModelConfig {
    /// `"vit"` or `"gpt"`, as given to `--model`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Vit(_) => "vit",
            Self::Gpt(_) => "gpt",
        }
    }

    /// Model width d.
    pub fn dim(&self) -> usize {
        match self {
            Self::Vit(c) => c.dim,
            Self::Gpt(c) => c.dim,
        }
    }

    /// Number of blocks.
    pub fn depth(&self) -> usize {
        match self {
            Self::Vit(c) => c.depth,
            Self::Gpt(c) => c.depth,
        }
    }

    /// Attention heads per block.
    pub fn heads(&self) -> usize {
        match self {
            Self::Vit(c) => c.heads,
            Self::Gpt(c) => c.heads,
        }
    }

    /// Width of one head, `d / heads`.
    pub fn head_dim(&self) -> usize {
        self.dim() / self.heads().max(1)
    }

    /// Hidden width of the MLP.
    pub fn mlp_dim(&self) -> usize {
        match self {
            Self::Vit(c) => c.mlp_dim,
            Self::Gpt(c) => c.mlp_dim,
        }
    }

    /// LayerNorm ε.
    pub fn ln_eps(&self) -> f64 {
        match self {
            Self::Vit(c) => c.ln_eps,
            Self::Gpt(c) => c.ln_eps,
        }
    }

    /// Tokens per full sequence: patches + CLS for the ViT, the context length for the GPT.
    pub fn tokens(&self) -> usize {
        match self {
            Self::Vit(c) => c.tokens(),
            Self::Gpt(c) => c.context,
        }
    }

    /// Number of output classes: image classes, or the vocabulary (next-token prediction).
    pub fn outputs(&self) -> usize {
        match self {
            Self::Vit(c) => c.classes,
            Self::Gpt(c) => c.vocab,
        }
    }

    /// Whether attention is causal (`j ≤ i`): the GPT's is, the ViT's is not.
    pub fn causal(&self) -> bool {
        matches!(self, Self::Gpt(_))
    }

    /// Rejects impossible architectures, naming the offending command-line flag.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Vit(c) => c.validate(),
            Self::Gpt(c) => c.validate(),
        }
    }

    /// Number of trainable parameters (the sizes of [`super::parameter_shapes`], summed).
    pub fn parameter_count(&self) -> usize {
        super::parameter_shapes(self)
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// The ViT's configuration, if this is one.
    pub fn as_vit(&self) -> Option<&VitConfig> {
        match self {
            Self::Vit(c) => Some(c),
            Self::Gpt(_) => None,
        }
    }

    /// The GPT's configuration, if this is one.
    pub fn as_gpt(&self) -> Option<&GptConfig> {
        match self {
            Self::Gpt(c) => Some(c),
            Self::Vit(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_follow_the_architectures() {
        // W1: patch 4·64+64, cls 64, pos 17·64, 4 blocks of (2 LN·128 + 4·(64²+64) + 64·128+128
        // + 128·64+64), lnf 128, head 64·10+10.
        assert_eq!(
            ModelConfig::from(VitConfig::w1()).parameter_count(),
            136_138
        );
        // W2: wte 256², pos 256², 6 blocks of (2·512 + 4·(256²+256) + 256·1024+1024 + 1024·256+256),
        // lnf 512, head 256²+256.
        let d = 256;
        let block = 2 * 2 * d + 4 * (d * d + d) + (d * 1024 + 1024) + (1024 * d + d);
        let want = 256 * d + 256 * d + 6 * block + 2 * d + (d * 256 + 256);
        assert_eq!(ModelConfig::from(GptConfig::w2()).parameter_count(), want);
    }

    #[test]
    fn configs_round_trip_through_json_with_a_kind_tag() {
        for c in [ModelConfig::from(VitConfig::w1()), GptConfig::w2().into()] {
            let text = serde_json::to_string(&c).unwrap();
            assert!(
                text.contains(&format!("\"kind\":\"{}\"", c.kind())),
                "{text}"
            );
            assert_eq!(serde_json::from_str::<ModelConfig>(&text).unwrap(), c);
        }
    }

    #[test]
    fn impossible_gpts_name_their_flag() {
        let mut g = GptConfig::w2();
        g.heads = 7;
        assert!(g.validate().unwrap_err().to_string().contains("--heads"));
        let mut g = GptConfig::w2();
        g.context = 0;
        assert!(g.validate().unwrap_err().to_string().contains("--context"));
    }
}
