// Embedding backward without atomics: the host lists, per table row, the token positions that
// use it (CSR: starts [n + 1], order [tokens]); each invocation sums one (row, column).
// Generated constants: WG.

struct Params { n: u32, d: u32, accumulate: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> starts: array<u32>;
@group(0) @binding(1) var<storage, read> order: array<u32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg, WG);
    if (idx >= p.n * p.d) { return; }
    let r = idx / p.d;
    let c = idx % p.d;
    var s = 0.0;
    for (var j = starts[r]; j < starts[r + 1u]; j++) { s += dy[order[j] * p.d + c]; }
    if (p.accumulate != 0u) { s += dtable[idx]; }
    dtable[idx] = s;
}
