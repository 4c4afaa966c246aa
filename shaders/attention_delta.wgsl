// Attention backward, first pass: delta[row, head] = sum_c dO * O over the head's columns.
// Generated constants: WG.

struct Params { rows: u32, heads: u32, hd: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> o: array<f32>;
@group(0) @binding(1) var<storage, read> d_o: array<f32>;
@group(0) @binding(2) var<storage, read_write> delta: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg, WG);
    if (idx >= p.rows * p.heads) { return; }
    let base = idx * p.hd;
    var s = 0.0;
    for (var c = 0u; c < p.hd; c++) { s = fma(d_o[base + c], o[base + c], s); }
    delta[idx] = s;
}
