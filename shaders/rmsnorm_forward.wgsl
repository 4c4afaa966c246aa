// RMSNorm forward, one workgroup per row: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
// Generated constants: WG (invocations per workgroup, a power of two).

struct Params { rows: u32, d: u32, eps: f32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    var s = 0.0;
    for (var c = li; c < p.d; c += WG) { let v = x[base + c]; s = fma(v, v, s); }
    red[li] = s;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (li < off) { red[li] += red[li + off]; }
        workgroupBarrier();
    }
    let r = 1.0 / sqrt(red[0] / f32(p.d) + p.eps);
    for (var c = li; c < p.d; c += WG) { y[base + c] = x[base + c] * r * w[c]; }
    if (li == 0u) { rstd[row] = r; }
}
