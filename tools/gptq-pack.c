/*
 * gptq-pack - qlinear frames + the original model -> an AutoGPTQ-format
 * checkpoint directory; --unpack reads one back into qlinear frames.
 */
#include "cli.h"
#include "io.h"
#include "packer.h"
#include "stream.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static const gq_tool tool = {
	"gptq-pack",
	"usage: gptq-pack -m MODEL -o OUTDIR [--format gptq|gptq_v2] [--shard-size SIZE]\n"
	"                 [--keep-dtype] [--fake-quant] [-f] [FILE|-]...\n"
	"       gptq-pack --unpack -m QUANTIZED_DIR [-o FILE] [-z]\n",
	"Pack gptq-solve's qlinear frames into a checkpoint that AutoGPTQ, GPTQModel and\n"
	"transformers load: qweight/qzeros/scales/g_idx per quantized linear, every other\n"
	"tensor copied, config.json with quantization_config, quantize_config.json,\n"
	"tokenizer files. OUTDIR appears only when complete.\n"
	"  -m, --model DIR       the original model (with --unpack: the packed checkpoint)\n"
	"  -o, --output PATH     the checkpoint directory (with --unpack: the stream file)\n"
	"      --format F        gptq (qzeros hold zero - 1, AutoGPTQ's format; default) or\n"
	"                        gptq_v2 (real zeros, GPTQModel's; needed when asymmetric)\n"
	"      --shard-size SIZE largest shard, e.g. 2G or 500M (default 5G); more than one\n"
	"                        shard adds model.safetensors.index.json\n"
	"      --keep-dtype      keep unquantized tensors' dtype (default: float16, as\n"
	"                        AutoGPTQ saves)\n"
	"  -f, --force           replace an existing OUTDIR; write binary to a terminal\n"
	"      --fake-quant      write the dequantized weights (float32, exact) into an\n"
	"                        ordinary float checkpoint (the GPTQ paper's evaluation;\n"
	"                        any shape, any runtime)\n"
	"      --unpack          write one qlinear frame per packed module of a checkpoint\n"
	"  -z, --zstd[=LEVEL]    with --unpack: compress the stream\n",
};

enum { OPT_FORMAT = GQ_OPT_TOOL_BASE, OPT_SHARD, OPT_KEEP, OPT_UNPACK, OPT_FAKE };

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		GQ_STREAM_OUT_LONG,
		{"model", required_argument, 0, 'm'},
		{"format", required_argument, 0, OPT_FORMAT},
		{"shard-size", required_argument, 0, OPT_SHARD},
		{"keep-dtype", no_argument, 0, OPT_KEEP},
		{"unpack", no_argument, 0, OPT_UNPACK},
		{"fake-quant", no_argument, 0, OPT_FAKE},
		{0, 0, 0, 0},
	};
	gq_pack_opts po = {.format = GQ_FORMAT_GPTQ, .shard_size = 5ull << 30};
	gq_stream_out out = {0};
	gq_common common;
	const char *model_dir = NULL;
	int unpack = 0, c;

	gq_cli_init(&tool, &common, argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT GQ_STREAM_OUT_SHORT "m:", longopts, NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg) || gq_cli_stream_out(&tool, &out, c, optarg))
			continue;
		switch (c) {
		case 'm': model_dir = optarg; break;
		case OPT_FORMAT:
			if (strcmp(optarg, "gptq") == 0)
				po.format = GQ_FORMAT_GPTQ;
			else if (strcmp(optarg, "gptq_v2") == 0)
				po.format = GQ_FORMAT_GPTQ_V2;
			else
				gq_usage_error(&tool, "--format: '%s' is not gptq or gptq_v2", optarg);
			break;
		case OPT_SHARD:
			if (gq_parse_size(optarg, &po.shard_size))
				gq_usage_error(&tool, "--shard-size: %s", gq_errmsg());
			if (po.shard_size < 1024)
				gq_usage_error(&tool, "--shard-size: at least 1K");
			break;
		case OPT_KEEP: po.keep_dtype = 1; break;
		case OPT_UNPACK: unpack = 1; break;
		case OPT_FAKE: po.fake = 1; break;
		default: gq_usage(&tool, 2);
		}
	}
	po.replace = out.force;
	if (!model_dir)
		gq_usage_error(&tool, "-m is required");
	if (unpack) {
		gq_writer_opts wo = {out.zstd_level, common.threads, out.force};
		gq_writer *w;

		if (optind < argc)
			gq_usage_error(&tool, "--unpack reads no input");
		if (po.fake)
			gq_usage_error(&tool, "--fake-quant applies to packing, not --unpack");
		if (gq_writer_open(&w, out.path, &wo) || gq_unpack_checkpoint(model_dir, w) ||
		    gq_writer_close(w, 1))
			die("%s", gq_errmsg());
	} else {
		char *dash = "-", **inputs = optind < argc ? argv + optind : &dash;
		int n = optind < argc ? argc - optind : 1;
		gq_reader **rd = ecalloc((size_t)n, sizeof *rd);
		gq_model *m;

		if (!out.path)
			gq_usage_error(&tool, "-o OUTDIR is required");
		if (out.zstd_level)
			gq_usage_error(&tool, "-z applies to --unpack's stream only");
		if (gq_model_open(&m, model_dir))
			die("%s", gq_errmsg());
		for (int i = 0; i < n; i++)
			if (gq_reader_open(&rd[i], inputs[i]))
				die("%s", gq_errmsg());
		if (gq_pack_checkpoint(m, rd, n, out.path, &po))
			die("%s", gq_errmsg());
		for (int i = 0; i < n; i++)
			gq_reader_close(rd[i]);
		free(rd);
		gq_model_close(m);
	}
	if (gq_close_stdout())
		die("%s", gq_errmsg());
	return 0;
}
