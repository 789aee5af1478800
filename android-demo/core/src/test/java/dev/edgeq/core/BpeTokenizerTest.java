package dev.edgeq.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

public class BpeTokenizerTest {
  @Test
  public void idsEqualHuggingFaceOnRealSentences() throws Exception {
    JSONObject fx = Fixtures.json("bpe_cases.json");
    BpeTokenizer tok = BpeTokenizer.fromTokenizerJson(new File(fx.getString("tokenizer_json")));
    JSONArray cases = fx.getJSONArray("cases");
    assertTrue("want at least 200 sentences, got " + cases.length(), cases.length() >= 200);
    int mismatches = 0;
    String first = null;
    for (int i = 0; i < cases.length(); i++) {
      JSONObject c = cases.getJSONObject(i);
      List<Integer> want = new ArrayList<>();
      JSONArray ids = c.getJSONArray("ids");
      for (int k = 0; k < ids.length(); k++) want.add(ids.getInt(k));
      List<Integer> got = tok.encode(c.getString("text"));
      if (!want.equals(got)) {
        mismatches++;
        if (first == null) first = c.getString("text") + "\n want " + want + "\n got  " + got;
      }
    }
    assertEquals("sentences whose ids differ from Hugging Face's; first: " + first, 0, mismatches);
  }
}
