// Vocab-parallel cross-entropy, pass 3, in place on a chunk of logits [rows, n] holding
// vocabulary columns lo..lo+n: g = (exp(x - lse) - [col == target]) * inv_count, zero for
// ignored targets (0xffffffff).
// Generated constants: WG.

struct Params { rows: u32, n: u32, lo: u32, inv_count: f32 }

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg, WG);
    if (idx >= p.rows * p.n) { return; }
    let r = idx / p.n;
    let c = idx % p.n;
    let t = targets[r];
    if (t == 0xffffffffu) {
        logits[idx] = 0.0;
        return;
    }
    var g = exp(logits[idx] - lse[r]);
    if (t == p.lo + c) { g -= 1.0; }
    logits[idx] = g * p.inv_count;
}
