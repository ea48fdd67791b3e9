function(doc) {
  if (doc.doc_type == "SystemRecord") {
    emit(doc.system_name, doc);
  }
}
