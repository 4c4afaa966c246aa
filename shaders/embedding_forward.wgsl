// Embedding gather from a table slice holding vocabulary rows lo..lo+n: out[t] = table[id - lo],
// or zero where the id belongs to another slice (added to out when accumulate != 0).
// Generated constants: WG.

struct Params { tokens: u32, d: u32, lo: u32, n: u32, accumulate: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg, WG);
    if (idx >= p.tokens * p.d) { return; }
    let t = idx / p.d;
    let c = idx % p.d;
    let id = ids[t];
    var v = 0.0;
    if (id >= p.lo && id - p.lo < p.n) { v = table[(id - p.lo) * p.d + c]; }
    if (p.accumulate != 0u) { v += out[idx]; }
    out[idx] = v;
}
