// Scaled add, elementwise and in place: y[y_off + i] += alpha * x[x_off + i] for i < n (the
// residual add with alpha = 1, SGD with alpha = -lr, the head's rows of a tied matrix's
// gradient added into the embedding's at their offsets).
// Generated constants: WG.

struct Params { n: u32, alpha: f32, x_off: u32, y_off: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    y[p.y_off + i] = fma(p.alpha, x[p.x_off + i], y[p.y_off + i]);
}
