"""Recurrent layers (RNN, LSTM, GRU) run along a spatial axis: a unidirectional layer reads the prefix, a
bidirectional one the whole axis."""
