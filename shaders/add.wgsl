// Scaled add, elementwise and in place: y += alpha * x (the residual add with alpha = 1, SGD
// with alpha = -lr).
// Generated constants: WG.

struct Params { n: u32, alpha: f32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    y[i] = fma(p.alpha, x[i], y[i]);
}
