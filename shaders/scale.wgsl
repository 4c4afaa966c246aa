// In-place scaling, elementwise: x *= factor (gradient clipping).
// Generated constants: WG.

struct Params { n: u32, factor: f32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    x[i] = x[i] * p.factor;
}
