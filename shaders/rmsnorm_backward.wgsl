// RMSNorm backward to the input, one workgroup per row:
// dx = rstd * w * dy - x * rstd^3 * mean(dy * w * x)   (added to dx when accumulate != 0).
// Generated constants: WG (a power of two).

struct Params { rows: u32, d: u32, accumulate: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    var s = 0.0;
    for (var c = li; c < p.d; c += WG) { s = fma(dy[base + c] * w[c], x[base + c], s); }
    red[li] = s;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (li < off) { red[li] += red[li + off]; }
        workgroupBarrier();
    }
    let r = rstd[row];
    let coef = red[0] * r * r * r / f32(p.d);
    for (var c = li; c < p.d; c += WG) {
        var v = r * w[c] * dy[base + c] - x[base + c] * coef;
        if (p.accumulate != 0u) { v += dx[base + c]; }
        dx[base + c] = v;
    }
}
