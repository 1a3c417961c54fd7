/*
 * act.h - model.c's activations on the device, numbered as gq_act_kind:
 * fwd.cu's activation kernel and qgemm.cu's gate/up GEMV share them.
 */
#ifndef GQ_GPU_ACT_H
#define GQ_GPU_ACT_H

#include "gpu/vendor.h"

__device__ __forceinline__ float gq_activate(int k, float x)
{
	switch (k) {
	case 0: return x / (1.0f + expf(-x));
	case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
	case 2: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
	case 3: return x > 0 ? x : 0;
	}
	return x;
}

#endif
