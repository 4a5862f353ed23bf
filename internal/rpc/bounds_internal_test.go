package rpc

import (
	"strings"
	"testing"
)

func TestAnAnswerOverTheBoundSaysHowToAsk(t *testing.T) {
	small, status := bounded([]byte(`{"id":1}`), 200)
	if string(small) != `{"id":1}` || status != 200 {
		t.Errorf("a small answer changed: %s %d", small, status)
	}
	out, status := bounded(make([]byte, maxAnswer+1), 200)
	if status != 400 || !strings.Contains(string(out), "ask for fewer") {
		t.Errorf("an answer over %d bytes: %d %s", maxAnswer, status, out)
	}
}
