"""Wire formats: decoding client payloads into numpy inputs and encoding outputs back."""
