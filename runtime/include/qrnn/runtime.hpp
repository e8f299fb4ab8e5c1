// The qrnn-deploy C++ streaming runtime: include this one header.
//
//   qrnn::Translator t("bundle_dir", qrnn::Options{});
//   qrnn::SourceStream src = t.source();
//   src.feed_text("Guten ");  src.feed_text("Morgen");       // incremental encoding
//   t.greedy(src.encoded(), 200, [&](int64_t id) { std::cout << t.tgt_vocab().token_text(id); });
#pragma once

#include "qrnn/backend.hpp"
#include "qrnn/decoders.hpp"
#include "qrnn/decoding.hpp"
#include "qrnn/errors.hpp"
#include "qrnn/generate.hpp"
#include "qrnn/graph.hpp"
#include "qrnn/manifest.hpp"
#include "qrnn/seq2seq.hpp"
#include "qrnn/tensor.hpp"
#include "qrnn/vocab.hpp"
