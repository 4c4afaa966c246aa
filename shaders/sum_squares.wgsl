// One stage of a fixed-order sum of squares (for the global gradient norm): each workgroup
// reduces WG * ITEMS consecutive elements to one partial. squares = 0 sums plain values
// (the later stages). No atomics, so the order, and the result, is the same on every run.
// Generated constants: WG (a power of two), ITEMS.

struct Params { n: u32, squares: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = flat_group(wid, nwg);
    let base = g * WG * ITEMS;
    var s = 0.0;
    for (var k = 0u; k < ITEMS; k++) {
        let i = base + k * WG + li;
        if (i < p.n) {
            let v = x[i];
            if (p.squares != 0u) { s = fma(v, v, s); } else { s += v; }
        }
    }
    red[li] = s;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (li < off) { red[li] += red[li + off]; }
        workgroupBarrier();
    }
    if (li == 0u) { partial[g] = red[0]; }
}
