"""Takes record files, gives tables and pictures: finding and checking records (collect), the
comparison table and its Pareto fronts (table), the charts (plots, html), fully connected
against convolutional (versus), the report (compare), and the figures of README.md and
docs/ generated from the committed records and checked against them (docs, doc_tables).
Never imports TensorFlow or Keras.
"""
