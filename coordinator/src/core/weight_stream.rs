//! A lease's weights as the `Weights` frames that carry them, cut one at a time as the
//! contributor's socket takes them. The core hands the shell one [`WeightStream`]: the weights
//! of that version (shared with the core and every other stream of that version, copied only
//! when the core changes them while a stream still reads them) and what to cut from them. So a
//! thousand leases handed out at once hold one copy of the model, not a thousand, and the
//! frames are encoded by the connection that sends them, not on the core's task.

use std::sync::Arc;

use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_compute::ModelConfig;
use tessera_protocol::{TensorPayload, ToContributor};

/// What a stream cuts from the weights.
#[derive(Clone, Debug, PartialEq)]
enum Parts {
    /// Every tensor whole (a whole-model lease), as micro-shard 0.
    Whole,
    /// The slices of these micro-shards, the `k`th as micro-shard `k` of the lease.
    Shards(Vec<MicroShard>),
}

/// The frames of one lease's weights at one version (see the module doc).
#[derive(Clone)]
pub struct WeightStream {
    lease: u64,
    version: u64,
    model: Arc<ModelConfig>,
    weights: Arc<ModelParams<f32>>,
    parts: Parts,
    /// Values per frame at most.
    chunk: usize,
    frames: u32,
}

impl std::fmt::Debug for WeightStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStream")
            .field("lease", &self.lease)
            .field("version", &self.version)
            .field("parts", &self.parts)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Two streams are equal when they cut the same frames from the same weights.
impl PartialEq for WeightStream {
    fn eq(&self, other: &Self) -> bool {
        (self.lease, self.version, self.chunk, &self.parts)
            == (other.lease, other.version, other.chunk, &other.parts)
            && Arc::ptr_eq(&self.weights, &other.weights)
    }
}

impl WeightStream {
    /// Every tensor of `weights` for whole-model lease `lease`.
    pub(super) fn whole(
        model: &ModelConfig,
        weights: &Arc<ModelParams<f32>>,
        ids: (u64, u64),
        chunk: usize,
    ) -> Self {
        Self::of(model, weights, ids, chunk, Parts::Whole)
    }

    /// The slices of `shards` of `weights` for pipeline lease `lease`. Micro-shards that do not
    /// fit the model (never the case for the run's own) have no frames.
    pub(super) fn shards(
        model: &ModelConfig,
        weights: &Arc<ModelParams<f32>>,
        ids: (u64, u64),
        chunk: usize,
        shards: Vec<MicroShard>,
    ) -> Self {
        Self::of(model, weights, ids, chunk, Parts::Shards(shards))
    }

    /// The stream of `parts` of `weights` for lease `lease` at `version`, `chunk` values a
    /// frame; its length counted from the tensors' sizes, without cutting anything.
    fn of(
        model: &ModelConfig,
        weights: &Arc<ModelParams<f32>>,
        (lease, version): (u64, u64),
        chunk: usize,
        parts: Parts,
    ) -> Self {
        let chunk = chunk.max(1);
        let sizes: Vec<usize> = match &parts {
            Parts::Whole => weights.named().iter().map(|(_, v)| v.len()).collect(),
            Parts::Shards(shards) => shards
                .iter()
                .filter_map(|s| ShardTensors::shapes(model, s).ok())
                .flatten()
                .map(|(_, [r, c])| r * c)
                .collect(),
        };
        let frames = sizes.iter().map(|n| n.div_ceil(chunk)).sum::<usize>();
        WeightStream {
            lease,
            version,
            model: Arc::new(model.clone()),
            weights: weights.clone(),
            parts,
            chunk,
            frames: frames as u32,
        }
    }

    /// The lease.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// How many frames the stream has (what the lease's message announces).
    pub fn len(&self) -> u32 {
        self.frames
    }

    /// Whether the stream has no frames.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The frames, in order, each cut when it is asked for (a pipeline stream holds one
    /// micro-shard's slices at a time).
    pub fn frames(&self) -> Box<dyn Iterator<Item = ToContributor> + Send + '_> {
        let (lease, version, chunk) = (self.lease, self.version, self.chunk);
        let frame = move |shard: u32, name: &str, shape: &[usize], i: usize, part: &[f32]| {
            ToContributor::Weights {
                lease,
                shard,
                version,
                name: name.to_string(),
                shape: shape.iter().map(|&d| d as u64).collect(),
                offset: (i * chunk) as u64,
                values: TensorPayload::from_f32(&[part.len()], part),
            }
        };
        match &self.parts {
            Parts::Whole => Box::new(
                tensor_shapes(&self.model)
                    .into_iter()
                    .zip(self.weights.named())
                    .flat_map(move |((name, shape), (_, values))| {
                        values
                            .chunks(chunk)
                            .enumerate()
                            .map(move |(i, part)| frame(0, &name, &shape, i, part))
                    }),
            ),
            Parts::Shards(shards) => Box::new(shards.iter().enumerate().flat_map(move |(k, s)| {
                let tensors = ShardTensors::from_model(&self.model, &self.weights, s)
                    .map(|t| t.tensors)
                    .unwrap_or_default();
                tensors.into_iter().flat_map(move |t| {
                    let n = t.data.len().div_ceil(chunk);
                    (0..n).map(move |i| {
                        let part = &t.data[i * chunk..((i + 1) * chunk).min(t.data.len())];
                        frame(k as u32, &t.name, &t.shape, i, part)
                    })
                })
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_compute::shard::MicroShard;

    fn values(m: &ToContributor) -> (u32, String, u64, Vec<f32>) {
        match m {
            ToContributor::Weights {
                shard,
                name,
                offset,
                values,
                ..
            } => (*shard, name.clone(), *offset, values.to_f32().unwrap()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_whole_stream_is_every_tensor_in_order_in_chunks_and_announces_its_length() {
        let cfg = ModelConfig::tiny();
        let w = Arc::new(ModelParams::random(&cfg, 3));
        let s = WeightStream::whole(&cfg, &w, (4, 2), 100);
        let frames: Vec<_> = s.frames().collect();
        assert_eq!(frames.len(), s.len() as usize);
        // Put back together, the frames are the weights.
        for (name, tensor) in w.named() {
            let mut got = Vec::new();
            for (shard, n, offset, v) in frames.iter().map(values) {
                if n == name {
                    assert_eq!((shard, offset as usize), (0, got.len()));
                    got.extend(v);
                }
            }
            assert_eq!(&got, tensor, "{name}");
        }
        assert!(matches!(
            frames[0],
            ToContributor::Weights {
                lease: 4,
                version: 2,
                ..
            }
        ));
    }

    #[test]
    fn a_shard_stream_is_each_micro_shard_s_slices_and_shares_the_weights() {
        let cfg = ModelConfig::tiny();
        let w = Arc::new(ModelParams::random(&cfg, 5));
        let shards = vec![
            MicroShard::Mlp {
                layer: 1,
                cols: 0..8,
            },
            MicroShard::Embed { rows: 0..10 },
        ];
        let s = WeightStream::shards(&cfg, &w, (7, 1), 64, shards.clone());
        assert_eq!(
            Arc::strong_count(&w),
            2,
            "the stream holds the weights, not a copy"
        );
        let frames: Vec<_> = s.frames().collect();
        assert_eq!(frames.len(), s.len() as usize);
        for (k, shard) in shards.iter().enumerate() {
            let want = ShardTensors::from_model(&cfg, &w, shard).unwrap();
            for t in want.tensors {
                let got: Vec<f32> = frames
                    .iter()
                    .map(values)
                    .filter(|(sh, n, ..)| *sh == k as u32 && *n == t.name)
                    .flat_map(|(.., v)| v)
                    .collect();
                assert_eq!(got, t.data, "{k} {}", t.name);
            }
        }
        assert_eq!(s, s.clone());
        let other = Arc::new((*w).clone());
        assert_ne!(s, WeightStream::shards(&cfg, &other, (7, 1), 64, shards));
    }
}
