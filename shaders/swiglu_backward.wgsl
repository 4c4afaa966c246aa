// SwiGLU backward, elementwise: du = dh * silu(g), dg = dh * u * sig(g) * (1 + g * (1 - sig(g))).
// Generated constants: WG.

struct Params { n: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> dg: array<f32>;
@group(0) @binding(4) var<storage, read_write> du: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let x = g[i];
    let sig = 1.0 / (1.0 + exp(-x));
    du[i] = dh[i] * x * sig;
    dg[i] = dh[i] * u[i] * sig * (1.0 + x * (1.0 - sig));
}
