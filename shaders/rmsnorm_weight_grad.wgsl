// RMSNorm backward to the weight, one invocation per column: dw[c] (+)= sum_r dy * x * rstd.
// Generated constants: WG.

struct Params { rows: u32, d: u32, accumulate: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, WG);
    if (c >= p.d) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) { s = fma(dy[r * p.d + c] * x[r * p.d + c], rstd[r], s); }
    if (p.accumulate != 0u) { s += dw[c]; }
    dw[c] = s;
}
