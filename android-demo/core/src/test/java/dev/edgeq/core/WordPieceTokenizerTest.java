package dev.edgeq.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

public class WordPieceTokenizerTest {
  @Test
  public void idsEqualHuggingFaceOnRealSentences() throws Exception {
    JSONObject fx = Fixtures.json("tokenizer_cases.json");
    Bundle bundle = Bundle.read(new File(fx.getString("bundle_dir")));
    Bundle.TokenizerConfig config = bundle.tokenizer;
    assertEquals("wordpiece", config.kind);
    Map<String, Integer> vocab = WordPieceTokenizer.readVocab(new File(bundle.dir, "vocab.txt"));
    WordPieceTokenizer tok = new WordPieceTokenizer(vocab, config);
    JSONArray cases = fx.getJSONArray("cases");
    assertTrue("want at least 200 sentences, got " + cases.length(), cases.length() >= 200);
    int mismatches = 0;
    String first = null;
    for (int i = 0; i < cases.length(); i++) {
      JSONObject c = cases.getJSONObject(i);
      WordPieceTokenizer.Encoding enc = tok.encode(c.getString("text"), config.maxLength);
      long[] want = Fixtures.longs(c.getJSONArray("input_ids"));
      long[] wantMask = Fixtures.longs(c.getJSONArray("attention_mask"));
      if (!java.util.Arrays.equals(want, enc.inputIds) || !java.util.Arrays.equals(wantMask, enc.attentionMask)) {
        mismatches++;
        if (first == null) {
          first = c.getString("text") + "\n want " + java.util.Arrays.toString(want) + "\n got  "
              + java.util.Arrays.toString(enc.inputIds);
        }
      }
    }
    assertEquals("sentences whose ids differ from Hugging Face's; first: " + first, 0, mismatches);
  }

  @Test
  public void goldenTextTokenizesToTheGoldenInput() throws Exception {
    Bundle bundle = Bundle.read(new File(Fixtures.json("tokenizer_cases.json").getString("bundle_dir")));
    WordPieceTokenizer tok =
        new WordPieceTokenizer(WordPieceTokenizer.readVocab(new File(bundle.dir, "vocab.txt")), bundle.tokenizer);
    WordPieceTokenizer.Encoding enc = tok.encode(bundle.goldenText, bundle.tokenizer.maxLength);
    assertArrayEquals(bundle.readLongs(bundle.goldenInputs.get(0)), enc.inputIds);
    assertArrayEquals(bundle.readLongs(bundle.goldenInputs.get(1)), enc.attentionMask);
  }

  @Test
  public void basicTokenizationByHand() throws Exception {
    Bundle.TokenizerConfig config = new Bundle.TokenizerConfig();
    assertEquals(java.util.Arrays.asList("cafe", ",", "naive", "!", "\u4e2d", "\u6587", "x"),
        WordPieceTokenizer.preTokenize(new WordPieceTokenizer(Map.of("[UNK]", 0), config)
            .normalize("Caf\u00e9,  NA\u00cfVE!\u4e2d\u6587\u200bx")));
  }
}
